"""Search efficiency: TPE + ASHA against a full grid over beta, on colored_digits.

The demo's spec (colored_digits, 2% conflicting, MLP, 60 epochs, c = 0.5). The grid trains
`--grid` values of beta evenly spaced in lambda over the searched interval (the same interval the
search draws from: simplified bounds, margin 0.05), each for every epoch. The search runs
`gerne_ray.tune` with TPE + ASHA, one trial at a time, `--trials` trials. For each, the budget is
counted in training epochs, in the order they were spent; the measure is the epochs spent before
some run's selected validation GBA (best epoch so far) comes within `--tolerance` points of the
grid's best. Target: the search needs a third of the grid's budget or less. Repeated for the
training/searcher seeds given (the grid is run again for each seed: the seed sets the training
noise too).

Run: python benchmarks/search_efficiency.py [--seeds 0 1 2] [--grid 16] [--trials 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gerne_ray import groups, space
from gerne_ray.demo import DEMO_SPEC
from gerne_ray.spec import load_spec
from gerne_ray.training import prepare, train
from gerne_ray.tuning import tune

C = 0.5


def epochs_to_reach(histories: list[list[dict]], target: float) -> int | None:
    """Epochs spent (runs in order, epochs in order) until a run's best val GBA so far >= target."""
    spent = 0
    for history in histories:
        best = -1.0
        for row in history:
            spent += 1
            if row.get("val_gba") is not None and np.isfinite(row["val_gba"]):
                best = max(best, row["val_gba"])
            if best >= target - 1e-12:
                return spent
    return None


def run_grid(base, seed: int, points: int, storage: str) -> list[dict]:
    """Train every grid point for all epochs; each run's history, in grid order."""
    stats = prepare(base, check_beta=False).stats
    lam_lo, lam_hi = space.lambda_range(stats, base.search.bounds, base.search.margin)
    runs = []
    for i, lam in enumerate(np.linspace(lam_lo, lam_hi, points)):
        beta = groups.beta_of(float(lam), C)
        spec = load_spec(base, [f"name=grid-s{seed}-{i}", f"seed={seed}", f"method.beta={beta!r}",
                                f"storage.path={storage}"])
        train(spec)
        history = pd.read_parquet(Path(storage) / spec.name / "history.parquet").to_dict("records")
        runs.append({"beta": beta, "history": history, "val_gba": max(r["val_gba"] for r in history)})
    return runs


def run_search(base, seed: int, trials: int, grace: int, storage: str) -> list[dict]:
    """TPE + ASHA, one trial at a time; each trial's history, in the order trials ran."""
    spec = load_spec(base, [f"name=search-s{seed}", f"seed={seed}", f"storage.path={storage}",
                            f"search.num_samples={trials}", "search.max_concurrent=1",
                            "search.scheduler=asha", f"search.grace_period={grace}", "search.final_seeds=0"])
    result = tune(spec)
    hist = pd.read_parquet(result.run_dir / "trial_histories.parquet")
    out = []
    for _, t in result.trials.sort_values("trial_number").iterrows():
        rows = hist[hist.trial_id == t.trial_id].sort_values("epoch").to_dict("records")
        out.append({"beta": t.beta, "history": rows, "val_gba": t.val_gba, "status": t.status})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--grace", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=1.0, help="points of val GBA")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    base = load_spec(DEMO_SPEC, [f"method.c={C}", f"search.space.c=[{C}]", "search.bounds=simplified",
                                 "search.margin=0.05"])
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as storage:
        for seed in args.seeds:
            grid = run_grid(base, seed, args.grid, storage)
            search = run_search(base, seed, args.trials, args.grace, storage)
            grid_best = max(r["val_gba"] for r in grid)
            target = grid_best - args.tolerance / 100
            grid_budget = sum(len(r["history"]) for r in grid)
            search_budget = sum(len(r["history"]) for r in search)
            reached = epochs_to_reach([r["history"] for r in search], target)
            grid_reached = epochs_to_reach([r["history"] for r in grid], target)
            rows.append({
                "seed": seed,
                "grid_points": args.grid,
                "grid_epochs": grid_budget,
                "grid_best_val_gba": grid_best,
                "grid_best_beta": max(grid, key=lambda r: r["val_gba"])["beta"],
                "grid_epochs_to_target_in_order": grid_reached,
                "search_trials": args.trials,
                "search_epochs": search_budget,
                "search_best_val_gba": max(r["val_gba"] for r in search if r["val_gba"] is not None),
                "search_best_beta": max(search, key=lambda r: r["val_gba"] or -1)["beta"],
                "search_stopped_trials": sum(r["status"] == "stopped" for r in search),
                "search_epochs_to_target": reached,
                "ratio_to_grid": None if reached is None else reached / grid_budget,
            })
            print(json.dumps(rows[-1]), flush=True)
    elapsed = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_efficiency.json").write_text(json.dumps(rows, indent=2) + "\n")
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = [
        "# Search efficiency: TPE + ASHA vs a full grid over beta (colored_digits, 2% conflicting)",
        "",
        f"Spec: the demo spec (jobs/demo.yaml), c = {C}, 60 epochs, beta over the simplified bounds "
        f"with margin 0.05. Grid: {args.grid} values evenly spaced in lambda = c (beta + 1), every one "
        f"trained for all epochs. Search: `gerne_ray.tune`, TPE (seeded) + ASHA (grace period "
        f"{args.grace}, reduction factor 3), {args.trials} trials, one at a time. Measure: training "
        f"epochs spent, in order, until some run's best validation GBA so far is within "
        f"{args.tolerance:g} point of the grid's best. Target: <= 1/3 of the grid's budget.",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; {elapsed:.0f} s in all.",
        "",
        "| seed | grid epochs | grid best val GBA (beta) | search epochs in all | search best val GBA (beta) "
        "| trials stopped by ASHA | search epochs to within 1 pt | / grid budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reached = "not reached" if r["search_epochs_to_target"] is None else str(r["search_epochs_to_target"])
        ratio = "" if r["ratio_to_grid"] is None else f"{r['ratio_to_grid']:.2f}"
        lines.append(
            f"| {r['seed']} | {r['grid_epochs']} | "
            f"{pct(r['grid_best_val_gba'])} ({r['grid_best_beta']:.3f}) | "
            f"{r['search_epochs']} | {pct(r['search_best_val_gba'])} ({r['search_best_beta']:.3f}) | "
            f"{r['search_stopped_trials']} | {reached} | {ratio} |"
        )
    (out / "search_efficiency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
