"""ERM vs resampling vs GERNE (c = 0.5, beta = 1) on colored_digits at 2% conflicting, over seeds.

The numbers that set the margin of tests/test_train.py::test_gerne_and_resampling_beat_erm.
Run: python benchmarks/quality_colored_digits.py [--seeds 5] [--out benchmarks/results]
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

METHODS = ("erm", "resample", "gerne")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        for method in METHODS:
            for seed in range(args.seeds):
                spec = load_spec(DEMO_SPEC, [f"name=q-{method}-{seed}", f"seed={seed}",
                                             f"method.name={method}", f"storage.path={storage}"])
                start = time.perf_counter()
                r = train(spec)
                keys = ("best_epoch", "val_gba", "test_gba", "test_wga", "test_avg")
                rows.append({"method": method, "seed": seed, "seconds": time.perf_counter() - start,
                             **{k: r[k] for k in keys}})
                print(json.dumps(rows[-1]))
    lines = [
        "# colored_digits, 2% conflicting: test metrics of the epoch selected by val GBA",
        "",
        f"Spec: the demo spec (jobs/demo.yaml); GERNE c = 0.5, beta = 1; seeds 0..{args.seeds - 1}.",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| method | test GBA mean | std | min | max | test WGA mean | seconds/run |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for method in METHODS:
        gba = np.array([r["test_gba"] for r in rows if r["method"] == method]) * 100
        wga = np.array([r["test_wga"] for r in rows if r["method"] == method]) * 100
        sec = np.mean([r["seconds"] for r in rows if r["method"] == method])
        summary[method] = {"gba": gba.tolist(), "wga": wga.tolist()}
        lines.append(f"| {method} | {gba.mean():.2f} | {gba.std():.2f} | {gba.min():.2f} | {gba.max():.2f} "
                     f"| {wga.mean():.2f} | {sec:.1f} |")
    for method in ("resample", "gerne"):
        gaps = np.array(summary[method]["gba"]) - np.array(summary["erm"]["gba"])
        lines.append(f"\n{method} - erm, per seed (points of test GBA): "
                     + ", ".join(f"{g:.1f}" for g in gaps) + f"; smallest {gaps.min():.1f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_colored_digits.md").write_text("\n".join(lines) + "\n")
    (out / "quality_colored_digits.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
