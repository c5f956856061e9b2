"""Baselines on real Colored MNIST beside the numbers the GERNE paper quotes (its Table 1, test GBA).

Every (method, conflict ratio, seed) is one `gerne_ray.train` run with the paper's Colored MNIST
settings (3-layer MLP, SGD lr 0.1, momentum 0.9, weight decay 0.01, B = 100 per class) and the
method's fixed hyperparameters below (the authors' defaults; no search), the epoch selected by
validation GBA. Runs resume: a rerun reuses finished runs and continues unfinished ones.

    python benchmarks/baselines_colored_mnist.py --mnist ../shared/data/mnist          # the table
    python benchmarks/baselines_colored_mnist.py --mnist ../shared/data/mnist --quick  # 0.5%, 1 seed

Writes benchmarks/results/baselines_colored_mnist.{json,md} (machine, versions, wall time).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gerne_ray.results import atomic_write  # noqa: E402
from gerne_ray.spec import load_spec  # noqa: E402
from gerne_ray.training import train  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# every row of the table: the method section and what it changes in the shared optim settings;
# the authors' defaults where they give them (see each module's docstring); nothing is searched
METHODS = {
    "erm": {"name": "erm"},
    "erm-adam": {"name": "erm"},
    "resample": {"name": "resample"},
    "gerne": {"name": "gerne", "c": 0.5, "beta": 1.0},
    "groupdro": {"name": "groupdro", "eta": 0.01},
    # the authors' train.py draws uniformly from the biased data (no --reweight_groups): a variant
    "groupdro-biased": {"name": "groupdro", "eta": 0.01, "sampling": "biased"},
    # T = 2: at seed 0 the ERM model after epoch 1 misclassifies 47% of the training rows (a transient);
    # from epoch 2 on every seed's error set is ~300 rows, ~250 of the 270 conflicting ones among them
    "jtt": {"name": "jtt", "T": 2, "lambda_up": 20.0},
    "lff": {"name": "lff", "q": 0.7, "ema_alpha": 0.7},
    "lff-shared-optim": {"name": "lff", "q": 0.7, "ema_alpha": 0.7},
    # C = 0.1, the middle of the authors' grid [0.01, 1] (log scale): at C = 1 liblinear's L1 fits of the
    # 10 one-vs-rest heads hit their iteration limit, 17 s per retrain (20 per epoch) against 0.3 s
    "dfr": {"name": "dfr", "C": 0.1},
}
# rows that leave the shared optim settings: LfF as its authors train Colored MNIST (Adam, lr 1e-3, no
# weight decay, alinlab/LfF config); with the shared weight decay 0.01 its debiased model collapses.
# ERM trained the same way ("erm-adam") is the "vanilla" row of the papers the published numbers come from
ADAM = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0}
OPTIM = {"lff": ADAM, "erm-adam": ADAM}
# Table 1 of the GERNE paper (test GBA %, Colored MNIST 0.5 / 1 / 2 / 5 %); DFR is not in it
PUBLISHED = {
    "erm": {0.005: 35.19, 0.01: 52.09, 0.02: 65.86, 0.05: 82.17},
    "resample": {0.005: 77.68, 0.01: 84.36, 0.02: 88.15, 0.05: 91.98},
    "groupdro": {0.005: 63.12, 0.01: 68.78, 0.02: 76.30, 0.05: 84.20},
    "jtt": {0.005: 53.03, 0.01: 62.90, 0.02: 74.23, 0.05: 84.03},
    "lff": {0.005: 52.50, 0.01: 61.89, 0.02: 71.03, 0.05: 84.79},
    "gerne": {0.005: 77.79, 0.01: 84.47, 0.02: 88.30, 0.05: 92.16},
}


FINDINGS = """
## Findings

The published numbers are the GERNE paper's Table 1, which quotes its baselines from other papers
(gerne-method.md section 9) whose training settings differ from the shared ones here (the GERNE
paper's Colored MNIST settings). Every baseline, run as its authors run it, is at or above its
published number at both ratios. The cells more than 5 points below were investigated:

- ERM (shared settings) is 18 and 31 points below the published ERM. The optimiser explains it: the
  same ERM with Adam (lr 1e-3, no weight decay, the LfF / DFA "vanilla" setting; row erm-adam) scores
  51.68 and 84.05, above the published 35.19 and 82.17. With SGD, lr 0.1 and weight decay 0.01, ERM
  fits the colour within 2 epochs (selected epoch 2 at 0.5%) and at 5% is still improving at epoch
  32 (selected epochs 27-31). ERM is the beta = -1 end of GERNE's range, trained as GERNE is.
- Group DRO with uniform draws (groupdro-biased) is 34 points below at 0.5%. At 0.5% each conflicting
  group holds about 3 of the 5,400 training rows of its class, so a batch of 100 per class contains
  a given conflicting group in about 5% of steps; Group DRO's weights q move only for the groups in
  the batch, so they cannot lift groups it rarely sees. Its authors run it with a group-balanced
  loader (`--reweight_groups`), our default `sampling: balanced` (row groupdro): 77.19, 14 points
  above the published 63.12. At 5% (27 rows per conflicting group) uniform draws reach 87.98.
- LfF with the shared settings (lff-shared-optim) is 35 and 41 points below. Its debiased model
  collapses to chance (seed 0, 0.5%): as the biased model fits the colour, the mean weight
  l_b / (l_b + l_d) of the debiased model's samples falls from 0.97 (epoch 4) to 0.38 (epoch 16), by
  design for the aligned majority, while weight decay 0.01 keeps its full strength; the debiased
  model's cross-entropy rises from 0.08 to 2.30 (= ln 10, a constant output) by epoch 28 and the
  weights fall to 0.005. Trained as its authors train Colored MNIST (Adam, lr 1e-3, no weight decay;
  row lff) it scores 75.15 and 88.84, 23 and 4 points above the published numbers.
- JTT runs with T = 2, not 1: at seed 0 the ERM model after epoch 1 misclassifies 47% of the
  training rows (a transient of SGD at lr 0.1; epochs 2-4 misclassify about 300, of which about 250
  are among the 270 conflicting rows), and stage 2 with that error set scored 20.58. With T = 2 all
  seeds score 59-60 at 0.5%. JTT now warns when its error set exceeds 25% of the training rows.
- DFR has no published Colored MNIST number. It runs with C = 0.1: at C = 1 liblinear's L1 fits of
  the 10 one-vs-rest heads hit their iteration limit on these features (17 s per retrain, 20 retrains
  after every epoch) against 0.3 s at C = 0.1. At 0.5% every seed selects epoch 1: the shared-settings
  ERM features it refits lose the digit's shape as ERM fits the colour (validation GBA of the refitted
  head 54% after epoch 1, 34% after epoch 5, 30% after epoch 32, seed 0), so DFR is bounded by its
  feature extractor here.
"""


def base_spec(mnist: str, ratio: float, epochs: int, storage: str) -> dict:
    """The paper's Colored MNIST setting at one conflict ratio."""
    return {
        "name": "x",
        "data": {"dataset": "colored_mnist", "root": mnist, "conflict_ratio": ratio},
        "model": {"arch": "mlp", "hidden": 100},
        "optim": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "epochs": epochs,
                  "batch_size_per_class": 100},
        "search": {"metric": "val_gba"},
        "storage": {"path": storage},
    }


def main() -> None:
    """Run (or resume) every cell and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", required=True, help="folder holding MNIST/raw (e.g. ../shared/data/mnist)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.005, 0.05])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--storage", default="runs/bench-baselines-cmnist")
    parser.add_argument("--quick", action="store_true", help="0.5%% only, seed 0")
    args = parser.parse_args()
    if args.quick:
        args.ratios, args.seeds = [0.005], [0]
    names = args.methods.split(",")
    out_json = RESULTS / "baselines_colored_mnist.json"
    record = json.loads(out_json.read_text()) if out_json.is_file() else {"runs": {}}
    for ratio in args.ratios:
        for name in names:
            for seed in args.seeds:
                key = f"{name}/{ratio}/{seed}"
                done = record["runs"].get(key)
                folder = Path(args.storage) / f"{name}-{ratio}-s{seed}"
                if done and done["status"] == "completed" and done["epochs"] == args.epochs:
                    if done.get("test_gba_by_test") is None and (folder / "history.parquet").is_file():
                        done["test_gba_by_test"] = best_test(folder)  # recorded before this key existed
                    print(f"{key}: test GBA {100 * (done['test_gba'] or 0):.2f} (recorded)", flush=True)
                    continue
                raw = base_spec(args.mnist, ratio, args.epochs, args.storage)
                raw.update(name=f"{name}-{ratio}-s{seed}", seed=seed, method=METHODS[name])
                raw["optim"].update(OPTIM.get(name, {}))
                t0 = time.perf_counter()
                r = train(load_spec(raw))
                record["runs"][key] = {
                    "method": name, "ratio": ratio, "seed": seed, "status": r["status"],
                    "best_epoch": r["best_epoch"], "epochs": args.epochs, "wall_s": time.perf_counter() - t0,
                    **{k: r[k] for k in ("val_gba", "test_gba", "test_wga", "test_avg")},
                    "test_gba_by_test": best_test(folder),  # the epoch with the best test GBA
                }
                print(f"{key}: test GBA {100 * (r['test_gba'] or 0):.2f} (epoch {r['best_epoch']}, "
                      f"{time.perf_counter() - t0:.0f} s)", flush=True)
                record.update(machine=f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                                      f"python {platform.python_version()}", versions=_versions())
                text = json.dumps(record, indent=1) + "\n"
                atomic_write(out_json, lambda tmp, text=text: Path(tmp).write_text(text))
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(out_json, lambda tmp: Path(tmp).write_text(text))
    (RESULTS / "baselines_colored_mnist.md").write_text(render(record))
    print(render(record))


def best_test(folder: Path) -> float | None:
    """The best test GBA over a run's epochs (its history.parquet): selection by test, for comparison."""
    import pandas as pd

    h = pd.read_parquet(folder / "history.parquet", columns=["test_gba"])
    return float(h["test_gba"].max()) if len(h) else None


def _versions() -> dict:
    import ray
    import torch

    return {"torch": torch.__version__, "ray": ray.__version__}


def settings(name: str) -> str:
    """A row's method values and optim changes, as `key=value` pairs."""
    values = {k: v for k, v in METHODS.get(name, {}).items() if k != "name"}
    values.update({f"optim.{k}": v for k, v in OPTIM.get(name, {}).items()})
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def render(record: dict) -> str:
    """The table: mean +- std (ddof 0) over seeds next to the published numbers, then the findings."""
    runs = list(record["runs"].values())
    ratios = sorted({r["ratio"] for r in runs})
    epochs = sorted({r["epochs"] for r in runs})
    lines = ["# Baselines on real Colored MNIST", "",
             "Test GBA % at the epoch selected by validation GBA, mean +- std (ddof 0) over seeds; "
             "published = the GERNE paper's Table 1. Shared settings: 3-layer MLP (100 hidden), SGD lr 0.1, "
             f"momentum 0.9, weight decay 0.01, B = 100 per class, {'/'.join(map(str, epochs))} epochs; each "
             "row's own values below, nothing searched (benchmarks/baselines_colored_mnist.py). "
             f"Machine: {record.get('machine')}; {record.get('versions')}; "
             f"{sum(r['wall_s'] for r in runs) / 60:.0f} min of runs in all.", "",
             "| method | settings | " + " | ".join(f"{100 * q:g}% (ours) | {100 * q:g}% (published)"
                                                   for q in ratios) + " | seeds |",
             "|---|---|" + "---|---|" * len(ratios) + "---|"]
    order = list(METHODS)
    rank = (lambda n: order.index(n) if n in order else len(order))  # noqa: E731
    for name in sorted(dict.fromkeys(r["method"] for r in runs), key=rank):
        cells, seeds = [], set()
        for q in ratios:
            mine = [r for r in runs if r["method"] == name and r["ratio"] == q and r["test_gba"] is not None]
            v = np.array([100 * r["test_gba"] for r in mine])
            seeds |= {len(v)}
            pub = PUBLISHED.get(METHODS.get(name, {}).get("name", name), {}).get(q)
            cells += [f"{v.mean():.2f} +- {v.std():.2f}" if len(v) else "",
                      "" if pub is None else f"{pub:.2f}"]
        counts = "/".join(map(str, sorted(seeds)))
        lines.append(f"| {name} | {settings(name)} | " + " | ".join(cells) + f" | {counts} |")
    return "\n".join(lines) + "\n" + FINDINGS


if __name__ == "__main__":
    main()
