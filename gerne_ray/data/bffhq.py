"""bFFHQ (biased FFHQ): DFA's release, class y = age (0 young, 1 old), attribute a = gender.

Layout (see `gerne_ray.data.dfa`), in data.root or data.root/bffhq:

    0.5pct/align/<class>/<id>_<y>_<a>.png     training, bias-aligned (y = a)
    0.5pct/conflict/<class>/<id>_<y>_<a>.png  training, bias-conflicting
    valid/<id>_<y>_<a>.png                    validation (beside 0.5pct in DFA's release)
    test/<id>_<y>_<a>.png                     test

Only the 0.5% ratio exists, so data.conflict_ratio is not read. Images are read lazily and as
stored (transform `none`: uint8, scaled to [0, 1] when batched; 128x128 or 224x224 depending on
the release, the size read from the first image). Every test image is loaded, aligned and
conflicting; the papers' "minority accuracy" is the accuracy on the test groups with y != a,
which the per-group metrics report.
"""

from __future__ import annotations

from gerne_ray.data.base import GroupedDataset
from gerne_ray.data.dfa import LAYOUT, load_dfa_folders, require_root
from gerne_ray.errors import GerneError

NAME = "bffhq"
NUM_CLASSES = 2
NUM_ATTRIBUTES = 2
CONFLICT_RATIO = 0.005
DFA_ALIAS = "bffhq"


def load_bffhq(root: str | None) -> GroupedDataset:
    """Load bFFHQ from DFA-style folders (0.5pct only): K = 2 ages, A = 2 genders, images read lazily."""
    root_dir = require_root(root, NAME, f"DFA-style bFFHQ folders ({LAYOUT}; only 0.5pct)")
    for folder in (root_dir, root_dir / DFA_ALIAS):
        if (folder / "0.5pct").is_dir():
            return load_dfa_folders(folder, CONFLICT_RATIO, NAME, NUM_CLASSES, NUM_ATTRIBUTES, "none")
    raise GerneError(
        f"data.root: neither {root_dir} nor {root_dir / DFA_ALIAS} has the folder 0.5pct of DFA's bFFHQ "
        f"release; expected 0.5pct/{{align,conflict}}/<class>/<id>_<y>_<a>.png plus valid/ and test/"
    )
