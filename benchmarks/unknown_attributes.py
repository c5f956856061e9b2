"""Unknown attributes on colored_digits: ERM vs GERNE with known groups vs GERNE on pseudo-groups.

The demo's spec (colored_digits 2%, MLP, 60 epochs, c = 0.5, beta = 1). GERNE with unknown
attributes uses the pseudo-groups of a biased model with t = 0.02, in two settings: `val_only`
(validation attribute labels exist: epochs selected by validation GBA, since this dataset's
validation WGA is 0 for every model) and `none` (no attribute labels at all: selected by validation
worst-class accuracy). Seeds 1..5; test GBA and the per-seed gain over ERM.

Run: python benchmarks/unknown_attributes.py [--seeds 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gerne_ray.demo import DEMO_SPEC
from gerne_ray.spec import load_spec
from gerne_ray.training import train

METHODS = {
    "ERM": ["method.name=erm"],
    "GERNE, known attributes": [],
    "GERNE, unknown (val_only, t = 0.02)": ["data.attributes=unknown", "data.attribute_labels=val_only",
                                            "method.t=0.02", "search.metric=val_gba"],
    "GERNE, unknown (none, t = 0.02)": ["data.attributes=unknown", "data.attribute_labels=none",
                                        "method.t=0.02", "search.metric=val_worst_class"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    seeds = list(range(1, args.seeds + 1))
    start = time.perf_counter()
    table: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as storage:
        for i, (label, overrides) in enumerate(METHODS.items()):
            runs = [train(load_spec(DEMO_SPEC, [f"name=u{i}-s{s}", f"seed={s}", f"storage.path={storage}",
                                                *overrides])) for s in seeds]
            table[label] = {k: [r.get(k) for r in runs] for k in ("test_gba", "test_wga", "best_epoch",
                                                                   "pseudo_precision", "pseudo_recall")}
            print(label, json.dumps(table[label]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "unknown_attributes.json").write_text(json.dumps({"seeds": seeds, **table}, indent=2) + "\n")
    erm = np.array(table["ERM"]["test_gba"]) * 100
    lines = [
        "# Unknown attributes on colored_digits (2% conflicting): test GBA",
        "",
        f"The demo spec; seeds {seeds}; test GBA of the epoch each run selects (%); gain = the method "
        "minus ERM, per seed.",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; {time.perf_counter() - start:.0f} s in all.",
        "",
        "| method | test GBA mean +- std | smallest gain over ERM | mean gain over ERM |",
        "|---|---|---|---|",
    ]
    for label, values in table.items():
        v = np.array(values["test_gba"]) * 100
        gain = v - erm
        lines.append(f"| {label} | {v.mean():.2f} +- {v.std():.2f} | "
                     f"{'' if label == 'ERM' else f'{gain.min():.2f}'} | "
                     f"{'' if label == 'ERM' else f'{gain.mean():.2f}'} |")
    (out / "unknown_attributes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
