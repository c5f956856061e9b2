"""CivilComments (WILDS): toxicity of online comments, with identity mentions as the attribute.

Layout: `data.root` holds WILDS's `all_data_with_identities.csv` (the civilcomments_v1.0 release,
as WILDS and SubpopBench download it), read for its columns comment_text, split (train/val/test),
toxicity, the eight identity columns below and, when present, id.

- y = 1 (toxic) when toxicity >= 0.5, else 0: K = 2.
- An identity is mentioned when its column is >= 0.5 (WILDS's and SubpopBench's threshold); a
  comment may mention several, so WILDS's evaluation groups overlap.
- a, the one attribute per sample that training needs: a = 1 when the comment mentions any of the
  eight identities, else 0: A = 2. This is SubpopBench's "coarse" CivilComments attribute (its
  `generate_metadata_civilcomments`, the protocol behind the GERNE paper's CivilComments numbers),
  which codes the same partition the other way round (its a = 1 means "no active attributes").
  SubpopBench trains with that binary attribute but evaluates val and test on the 16 overlapping
  (identity, y) groups, by duplicating each comment once per identity it mentions and dropping
  comments that mention none: per-group accuracies equal to WILDS's. Here every comment stays once
  in every split, and the returned dataset keeps the identity matrix (`ds.identities`, (N, 8) bool,
  columns `ds.identity_names`) for `wilds_group_table` / `wilds_worst_group_accuracy`, WILDS's
  evaluation: the training loop's own val/test metrics are over the four (y, a) groups.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from gerne_ray.data.base import SPLITS, GroupedDataset
from gerne_ray.data.text import TokenizedText
from gerne_ray.errors import GerneError

NAME = "civilcomments"
FILE = "all_data_with_identities.csv"
IDENTITIES = ("male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white")
THRESHOLD = 0.5


def load_civilcomments(
    root: str | Path, tokenizer: str = "bert-base-uncased", max_length: int = 220,
) -> GroupedDataset:
    """WILDS CivilComments: y = toxic, a = any identity mentioned; `ds.identities` keeps all eight."""
    if root is None:
        raise GerneError(f"data.root: civilcomments needs data.root, the folder holding {FILE} (WILDS)")
    path = Path(root) / FILE
    if not path.is_file():
        raise GerneError(
            f"data.root: {path} does not exist; point data.root at the folder holding WILDS's {FILE} "
            "(civilcomments_v1.0, e.g. as `wilds` or SubpopBench's download.py fetch it)"
        )
    wanted = {"id", "comment_text", "split", "toxicity", *IDENTITIES}
    try:
        df = pd.read_csv(path, usecols=lambda c: c in wanted, keep_default_na=False, na_values={
            c: ["", "nan", "NaN"] for c in ("toxicity", *IDENTITIES)
        })
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise GerneError(f"data.root: {path} is not a readable CSV ({err})") from None
    missing = sorted({"comment_text", "split", "toxicity", *IDENTITIES} - set(df.columns))
    if missing:
        raise GerneError(f"data.root: {path} lacks the columns {missing}; is it WILDS's {FILE}?")
    split_names = df["split"].astype(str).str.strip()
    unknown = sorted(set(split_names) - set(SPLITS))
    if unknown:
        raise GerneError(f"data.root: {path}: column split has values {unknown[:5]}; use train, val or test")
    toxicity = pd.to_numeric(df["toxicity"], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(toxicity).any():
        row = int(np.flatnonzero(np.isnan(toxicity))[0])
        raise GerneError(f"data.root: {path}: toxicity is missing or not a number in data row {row + 1}")
    scores = df[list(IDENTITIES)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    identities = np.nan_to_num(scores, nan=0.0) >= THRESHOLD  # WILDS: a missing score is no mention
    ids = np.arange(len(df), dtype=np.int64)  # row positions, unless the file has integer ids
    if "id" in df.columns:
        given = pd.to_numeric(df["id"], errors="coerce")
        if given.isna().any() or (given != given.round()).any():
            raise GerneError(f"data.root: {path}: column id must hold integers (WILDS's comment ids)")
        ids = given.to_numpy(dtype=np.int64)
    ds = GroupedDataset(
        name=NAME,
        inputs=TokenizedText(df["comment_text"].astype(str).tolist(), tokenizer, max_length),
        y=(toxicity >= THRESHOLD).astype(np.int64),
        a=identities.any(axis=1).astype(np.int64),
        split=split_names.map(SPLITS).to_numpy(dtype=np.int8),
        ids=ids,
        num_classes=2,
        num_attributes=2,
    )
    ds.identities = identities
    ds.identity_names = IDENTITIES
    return ds


def wilds_group_table(
    y: np.ndarray, pred: np.ndarray, identities: np.ndarray, names: tuple[str, ...] = IDENTITIES,
) -> list[dict]:
    """WILDS's 16 overlapping groups (identity mentioned, y), in its order: n, correct and accuracy each."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    identities = np.asarray(identities, dtype=bool)
    if y.shape != pred.shape or identities.shape != (len(y), len(names)):
        raise ValueError(
            f"y {y.shape}, pred {pred.shape} and identities {identities.shape} must be (N,), (N,) and "
            f"(N, {len(names)})"
        )
    rows = []
    for j, identity in enumerate(names):
        for label in (0, 1):
            member = identities[:, j] & (y == label)
            n, correct = int(member.sum()), int((pred[member] == label).sum())
            rows.append({"identity": identity, "y": label, "n": n, "correct": correct,
                         "accuracy": correct / n if n else math.nan})
    return rows


def wilds_worst_group_accuracy(y: np.ndarray, pred: np.ndarray, identities: np.ndarray) -> float:
    """The lowest accuracy over WILDS's non-empty (identity, y) groups (empty ones skipped, as WILDS does)."""
    accuracies = [r["accuracy"] for r in wilds_group_table(y, pred, identities) if r["n"]]
    return min(accuracies) if accuracies else math.nan
