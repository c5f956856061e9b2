"""Texts tokenized lazily: the Source behind every text dataset (CivilComments, MultiNLI).

Each sample is one text, or one (premise, hypothesis) pair, turned into the input ids of a Hugging
Face tokenizer when it is read: padded and truncated to `max_length`, so a batch is a LongTensor
(batch, max_length) and the model builds its attention mask from the padding id. `data.tokenizer`
names the tokenizer: a Hugging Face Hub name (cached under $HF_HOME after one online load) or a
local folder holding the files `save_pretrained` writes. The tokenizer is loaded once when the
source is made (to fail early and to know the vocabulary size) and again, lazily, in every process
that unpickles the source (DataLoader and Ray workers): it is never pickled itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gerne_ray.data.base import Source
from gerne_ray.errors import GerneError

INSTALL_HINT = "install the nlp extra: pip install -e '.[nlp]'"


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def load_tokenizer(name: str, where: str = "data.tokenizer") -> Any:
    """The Hugging Face tokenizer `name` (a Hub name or a local folder), or GerneError with the fix."""
    try:
        from transformers import AutoTokenizer
    except ImportError as err:
        raise GerneError(f"{where}: text datasets need transformers ({err}); {INSTALL_HINT}") from None
    folder = Path(name).expanduser()
    fix = (
        f"set {where} to a local folder holding the tokenizer files (tokenizer.json or vocab.txt with "
        "tokenizer_config.json, as save_pretrained writes them), or load it online once so that "
        "Hugging Face caches it under $HF_HOME"
    )
    if _looks_like_path(name) and not folder.is_dir():
        raise GerneError(f"{where}: {name} is not an existing folder; {fix}")
    try:
        return AutoTokenizer.from_pretrained(str(folder) if folder.is_dir() else name)
    except Exception as err:  # OSError offline or not found, ValueError for a bad folder, hub errors
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise GerneError(
            f"{where}: could not load the tokenizer {name!r} ({type(err).__name__}: {first}); {fix}"
        ) from None


class TokenizedText(Source):
    """Texts or text pairs as LongTensors (max_length,) of input ids, tokenized when read."""

    def __init__(
        self, texts: Sequence[str] | Sequence[tuple[str, str]], tokenizer: str = "bert-base-uncased",
        max_length: int = 220, where: str = "data.tokenizer",
    ) -> None:
        if int(max_length) < 1:
            raise GerneError(f"data.max_length must be >= 1, got {max_length}")
        texts = list(texts)
        self.pairs = bool(texts) and isinstance(texts[0], tuple | list)
        if self.pairs:
            self.first = [str(t[0]) for t in texts]
            self.second: list[str] | None = [str(t[1]) for t in texts]
        else:
            self.first, self.second = [str(t) for t in texts], None
        self.tokenizer, self.max_length, self.where = tokenizer, int(max_length), where
        self.input_shape = (self.max_length,)
        self._tok = load_tokenizer(tokenizer, where)
        self.vocab_size = len(self._tok)  # added tokens included: the embedding rows the model needs
        self.pad_token_id = self._tok.pad_token_id
        self.sep_token_id = self._tok.sep_token_id
        if self.pad_token_id is None:
            raise GerneError(
                f"{where}: the tokenizer {tokenizer!r} has no padding token; use a BERT-style tokenizer"
            )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tok"] = None  # each process loads its own
        return state

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._tok is None:
            self._tok = load_tokenizer(self.tokenizer, self.where)
        args = (self.first[i],) if self.second is None else (self.first[i], self.second[i])
        ids = self._tok(*args, padding="max_length", truncation=True, max_length=self.max_length)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)
