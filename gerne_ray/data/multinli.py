"""MultiNLI with the negation attribute (group_DRO's release), read as raw text pairs.

group_DRO's `metadata_random.csv` gives, per sample, gold_label (y: 0 contradiction, 1 entailment,
2 neutral; K = 3), sentence2_has_negation (a; A = 2) and split (0/1/2 = train/val/test, a random
re-split of MNLI's train + dev sets). Its rows line up, in order, with the samples of GLUE's MNLI
files train.tsv, then dev_matched.tsv, then dev_mismatched.tsv: the files group_DRO's cached BERT
features were built from. Those cached features are torch pickles, which this package never
loads (unpickling a file can run code); it tokenizes the GLUE text instead: (sentence1, sentence2)
= (premise, hypothesis) pairs, as the features were.

Layout under `data.root` (group_DRO's and SubpopBench's, or flat):
    metadata_random.csv            or data/metadata_random.csv
    glue_data/MNLI/train.tsv       or train.tsv             (392,702 pairs in GLUE's release)
    glue_data/MNLI/dev_matched.tsv or dev_matched.tsv       (9,815)
    glue_data/MNLI/dev_mismatched.tsv or dev_mismatched.tsv (9,832)
The TSVs are read as GLUE's run_glue reads them (tab-separated, no quoting, a header row, the
columns sentence1 and sentence2, the label last). The row count must equal the metadata's, and
each TSV label must map to one metadata gold_label for >= 99% of rows: else the files do not line up.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from gerne_ray.data.base import GroupedDataset
from gerne_ray.data.text import TokenizedText
from gerne_ray.errors import GerneError

NAME = "multinli"
METADATA = ("metadata_random.csv", "data/metadata_random.csv")
TEXT_DIRS = ("glue_data/MNLI", ".")
TSV_FILES = ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv")
MIN_LABEL_AGREEMENT = 0.99


def _first_existing(root: Path, candidates: tuple[str, ...], what: str) -> Path:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    tried = ", ".join(str(root / c) for c in candidates)
    raise GerneError(f"data.root: no {what} found (tried {tried}); gerne_ray/data/multinli.py has the layout")


def read_glue_tsv(path: Path) -> tuple[list[str], list[str], list[str]]:
    """Premises, hypotheses and text labels of one GLUE MNLI TSV file, in file order."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or "sentence1" not in header or "sentence2" not in header:
            raise GerneError(f"data.root: {path} has no header naming sentence1 and sentence2 (GLUE MNLI)")
        i, j = header.index("sentence1"), header.index("sentence2")
        premises, hypotheses, labels = [], [], []
        for number, line in enumerate(reader, start=2):
            if len(line) <= max(i, j):
                raise GerneError(f"data.root: {path} line {number} has {len(line)} fields; is it GLUE MNLI?")
            premises.append(line[i])
            hypotheses.append(line[j])
            labels.append(line[-1])
    return premises, hypotheses, labels


def _check_aligned(text_labels: list[str], y: np.ndarray, where: str) -> None:
    table = pd.crosstab(pd.Series(text_labels, name="text"), pd.Series(y, name="y"))
    agreement = table.max(axis=1).sum() / max(len(y), 1)  # share of rows on their label's majority id
    one_to_one = table.idxmax(axis=1).is_unique
    if agreement < MIN_LABEL_AGREEMENT or not one_to_one:
        raise GerneError(
            f"data.root: the GLUE labels of {where} agree with metadata_random.csv's gold_label on only "
            f"{agreement:.1%} of rows: the text files do not line up with the metadata (they must be GLUE's "
            f"MNLI {', '.join(TSV_FILES)}, concatenated in that order)"
        )


def load_multinli(
    root: str | Path, tokenizer: str = "bert-base-uncased", max_length: int = 128,
) -> GroupedDataset:
    """group_DRO MultiNLI: y = gold_label, a = sentence2_has_negation, inputs = (premise, hypothesis) ids."""
    if root is None:
        raise GerneError("data.root: multinli needs data.root, the folder of metadata_random.csv and MNLI")
    root = Path(root)
    meta_path = _first_existing(root, METADATA, "metadata_random.csv (group_DRO)")
    trains = tuple(f"{d}/{TSV_FILES[0]}" for d in TEXT_DIRS)
    text_dir = _first_existing(root, trains, "GLUE MNLI train.tsv").parent
    try:
        meta = pd.read_csv(meta_path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise GerneError(f"data.root: {meta_path} is not a readable CSV ({err})") from None
    missing = sorted({"gold_label", "sentence2_has_negation", "split"} - set(meta.columns))
    if missing:
        raise GerneError(f"data.root: {meta_path} lacks the columns {missing}; is it group_DRO's metadata?")
    premises, hypotheses, labels = [], [], []
    for name in TSV_FILES:
        path = text_dir / name
        if not path.is_file():
            raise GerneError(
                f"data.root: {path} does not exist; multinli needs GLUE MNLI's {', '.join(TSV_FILES)}"
            )
        p, h, lab = read_glue_tsv(path)
        premises += p
        hypotheses += h
        labels += lab
    if len(premises) != len(meta):
        raise GerneError(
            f"data.root: {text_dir} holds {len(premises)} sentence pairs but {meta_path} has {len(meta)} "
            "rows; "
            "they must be the same samples in the same order (GLUE's MNLI train, dev_matched, dev_mismatched)"
        )
    columns = {}
    for column in ("gold_label", "sentence2_has_negation", "split"):
        values = pd.to_numeric(meta[column], errors="coerce")
        if values.isna().any() or (values != values.round()).any():
            raise GerneError(f"data.root: {meta_path}: column {column} must hold integers")
        columns[column] = values.to_numpy(dtype=np.int64)
    _check_aligned(labels, columns["gold_label"], text_dir)
    first = meta.columns[0]
    unnamed = first == "" or str(first).startswith("Unnamed")
    ids = pd.to_numeric(meta[first], errors="coerce") if unnamed else None
    ids = ids.to_numpy(dtype=np.int64) if ids is not None and not ids.isna().any() else np.arange(len(meta))
    if not np.isin(columns["split"], (0, 1, 2)).all():
        raise GerneError(f"data.root: {meta_path}: column split must hold 0, 1 or 2 (train, val, test)")
    return GroupedDataset(
        name=NAME,
        inputs=TokenizedText(list(zip(premises, hypotheses, strict=True)), tokenizer, max_length),
        y=columns["gold_label"],
        a=columns["sentence2_has_negation"],
        split=columns["split"].astype(np.int8),
        ids=ids.astype(np.int64),
        num_classes=3,
        num_attributes=2,
    )
