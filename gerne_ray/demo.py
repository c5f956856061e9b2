"""The offline demo: ERM and resampling against GERNE tuned by Ray Tune + Optuna, on colored_digits.

GERNE's beta (and c) is searched inside its bounds on an embedded local Ray (ASHA stops weak trials
early), the best configuration is trained again with `search.final_seeds` new seeds, and ERM and
resampling are trained with the same seeds: every row of the table is a mean over the same seeds.
"""

from __future__ import annotations

import time

import numpy as np

from gerne_ray.spec import JobSpec, load_spec

# The embedded demo job; jobs/demo.yaml is the same spec as a file (a test keeps them equal).
DEMO_SPEC: dict = {
    "name": "demo",
    "seed": 0,
    "data": {"dataset": "colored_digits", "conflict_ratio": 0.02},
    "model": {"arch": "mlp"},
    "method": {"name": "gerne", "c": 0.5, "beta": 1.0},
    "optim": {
        "optimizer": "sgd",
        "lr": 0.1,
        "weight_decay": 0.0005,
        "momentum": 0.9,
        "epochs": 60,
        "batch_size_per_class": 16,
    },
    "search": {
        "metric": "val_gba",
        "num_samples": 12,
        "scheduler": "asha",
        "grace_period": 10,
        "max_concurrent": 1,  # one trial at a time: ASHA's decisions, so the table, are reproducible
        "final_seeds": 3,
        "space": {"c": [0.5, 1.0]},
    },
    "storage": {"path": "runs"},
}
BASELINES = ("erm", "resample")


def demo_spec() -> JobSpec:
    """The validated demo spec."""
    return load_spec(DEMO_SPEC)


def baseline_runs(base: JobSpec, methods: tuple[str, ...], seeds: list[int], storage: str) -> list[JobSpec]:
    """One spec per (method, seed), named <name>-<method>-s<seed>."""
    return [
        load_spec(base, [f"name={base.name}-{method}-s{seed}", f"seed={seed}", f"method.name={method}",
                         f"storage.path={storage}"])
        for method in methods for seed in seeds
    ]


def _cells(values: list[float]) -> str:
    v = 100 * np.array(values, dtype=float)
    return f"{v.mean():6.2f} +- {v.std():5.2f}"


def run_demo(storage: str = "runs", seeds: int = 3, trials: int | None = None) -> dict[str, dict]:
    """Train the baselines, tune GERNE, print test GBA and WGA side by side; return per-method values."""
    from gerne_ray.training import train
    from gerne_ray.tuning import final_seeds, tune

    overrides = [f"storage.path={storage}", f"search.final_seeds={seeds}"]
    if trials is not None:
        overrides.append(f"search.num_samples={trials}")
    base = load_spec(demo_spec(), overrides)
    seed_list = final_seeds(base)
    start = time.perf_counter()
    print(f"gerne-ray demo: colored_digits, {100 * base.data.conflict_ratio:g}% bias-conflicting, "
          f"{base.model.arch}, {base.optim.epochs} epochs; seeds {seed_list}")
    table: dict[str, dict] = {}
    for method in BASELINES:
        runs = [train(spec) for spec in baseline_runs(base, (method,), seed_list, storage)]
        table[method] = {k: [r[k] for r in runs] for k in ("test_gba", "test_wga", "val_gba")}
        print(f"  {method:9s} trained with {len(runs)} seeds ({time.perf_counter() - start:.0f} s)",
              flush=True)
    print(f"GERNE: {base.search.num_samples} trials searching c in {base.search.space.c} and beta inside "
          f"its bounds, then the best configuration with seeds {seed_list}", flush=True)
    result = tune(base)
    runs = result.best["final_seeds"]["runs"]
    table["gerne"] = {k: [r[k] for r in runs] for k in ("test_gba", "test_wga", "val_gba")}
    cfg = result.config
    print()
    print(f"{'method':22s} {'test GBA':>15s} {'test WGA':>15s} {'val GBA':>15s}")
    for method, values in table.items():
        label = method if method != "gerne" else f"gerne c={cfg['c']:.3g} b={cfg['beta']:.3g}"
        print(f"{label:22s} " + " ".join(f"{_cells(values[k]):>15s}"
                                         for k in ("test_gba", "test_wga", "val_gba")))
    print(f"\nGBA: mean of per-group accuracies; WGA: worst group's accuracy; mean +- std over seeds "
          f"{seed_list}, the epoch of each run selected by val GBA. Search report: "
          f"{result.location}/report.html (and report.md). Total {time.perf_counter() - start:.0f} s.")
    return table
