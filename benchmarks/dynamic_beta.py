"""A beta that moves during training, measured: the best static beta found by TPE, PBT, and the best of
a grid of fixed beta schedules, each with the same epoch budget (trials x epochs), over 3 seeds.

Per dataset and seed s, three ways to spend N trials of E epochs, each selecting by validation GBA:
- "tpe": `gerne-ray tune` (Optuna TPE seeded by s, FIFO so that every trial trains all E epochs),
  c in {0.5, 1} and lambda = c (beta + 1) inside the bounds; beta constant in each trial;
- "pbt": `search.scheduler: pbt`, a population of N trials over the same space (first population
  drawn with seed s), perturbing lambda and c every `--interval` epochs, asynchronous (Ray's default);
- "schedules": N fixed schedules (`method.beta_schedule`: the first N of the `SCHEDULES` grid, 8
  shapes in lambda terms, c 0.5 and 1), each trained with seed s; the best by validation GBA is kept.
The row of a method and seed is the selected trial's test GBA at its validation-selected epoch (mean
+- std, ddof 0, over the seeds). Every trial trains with the seed s (TPE and PBT search
configurations, not seeds), as the project's search does.

    python benchmarks/dynamic_beta.py                                   # colored_digits, 3 seeds
    python benchmarks/dynamic_beta.py --quick                           # colored_digits, 1 seed, short
    python benchmarks/dynamic_beta.py --datasets colored_mnist --mnist ../shared/data/mnist   # hours

colored_mnist is the paper's spec (jobs/paper/colored_mnist_0.5pct.yaml: 0.5% conflicting, MLP, B =
100 per class, 64 epochs) with data.root = --mnist; colored_digits is the offline demo's
(jobs/demo.yaml). Resumable: every search and run lives under --storage and is reused by a rerun
(a finished one trains nothing); the record (benchmarks/results/dynamic_beta.json, with the machine,
versions and wall times) is rewritten after every cell, the table (.md) at the end of every call.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from paper_colored_mnist import _versions, _write_json  # noqa: E402

from gerne_ray import groups  # noqa: E402
from gerne_ray.data import load_dataset  # noqa: E402
from gerne_ray.loop import training_stats  # noqa: E402
from gerne_ray.spec import load_spec  # noqa: E402
from gerne_ray.training import train  # noqa: E402
from gerne_ray.tuning import tune  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ("tpe", "pbt", "schedules")
SPECS = {"colored_digits": ROOT / "jobs" / "demo.yaml",
         "colored_mnist": ROOT / "jobs" / "paper" / "colored_mnist_0.5pct.yaml"}
# budget per dataset: (trials N, epochs E, PBT's perturbation interval); --quick: (4, 12, 3) and 1 seed
BUDGET = {"colored_digits": (8, 30, 5), "colored_mnist": (8, 32, 4)}
QUICK = (4, 12, 3)
# the fixed schedules, as (shape, lambda at the start, lambda at the end, warmup share of the epochs),
# lambda = c (beta + 1) given as a share of lambda_max (the bound, the same for every c); each with c
# 0.5 and 1: 8 x 2 = 16 runs, the first N of `schedule_grid` for a budget of N trials
SCHEDULES = (
    ("linear", 0.5, 0.95, 0.0),   # from half the bound up to near it
    ("cosine", 0.95, 0.5, 0.0),   # from near the bound down to half of it
    ("linear", 0.2, 0.95, 0.25),  # near ERM for a quarter of the epochs, then up to near the bound
    ("cosine", 0.7, 0.95, 0.0),   # from 0.7 of the bound up to near it
    # for budgets of more than 8 trials
    ("linear", 0.95, 0.2, 0.0),   # from near the bound down to near ERM
    ("cosine", 0.5, 0.95, 0.5),   # half the bound for half the epochs, then up to near it
    ("linear", 0.8, 0.95, 0.0),   # a short climb near the bound
    ("cosine", 0.3, 0.8, 0.0),    # from near ERM up to 0.8 of the bound
)
SCHEDULE_CS = (0.5, 1.0)


def schedule_grid(n: int) -> list[tuple[int, float]]:
    """The first n (schedule index, c) pairs, in blocks of 4 shapes: each shape of a block once (c
    alternating), then again with the other c, before the next block."""
    pairs = []
    for block in range(0, len(SCHEDULES), 4):
        shapes = range(block, min(block + 4, len(SCHEDULES)))
        pairs += [(i, SCHEDULE_CS[i % 2]) for i in shapes] + [(i, SCHEDULE_CS[(i + 1) % 2]) for i in shapes]
    if n > len(pairs):
        raise SystemExit(f"the schedule grid has {len(pairs)} runs; a budget of {n} trials needs more")
    return pairs[:n]


def base_spec(dataset: str, args, trials: int, epochs: int) -> dict:
    """The dataset's job spec with this benchmark's budget, storage and (MNIST) data folder."""
    over = [f"storage.path={args.storage}", f"optim.epochs={epochs}", f"search.num_samples={trials}",
            "search.final_seeds=0", "search.metric=val_gba", "search.space.c=[0.5, 1.0]"]
    if dataset == "colored_mnist":
        if not args.mnist:
            raise SystemExit("colored_mnist needs --mnist, the folder holding MNIST/raw")
        over.append(f"data.root={Path(args.mnist).resolve()}")
    return load_spec(SPECS[dataset], over).model_dump(mode="json")


def searched(method: str, base: dict, dataset, seed: int, tag: str, interval: int) -> dict:
    """A TPE (FIFO) or PBT search with seed `seed`: the validation-best trial's val and test GBA."""
    over = [f"name={tag}-{method}-s{seed}", f"seed={seed}"]
    if method == "tpe":
        over.append("search.scheduler=fifo")
    else:
        over += ["search.scheduler=pbt", f"search.perturbation_interval={interval}"]
    spec = load_spec(base, over)
    result = tune(spec, dataset=dataset)
    best = result.best
    out = {"val": best["val_gba"], "test": best["test_gba"], "trial": best["trial_id"],
           "best_epoch": best["best_epoch"], "config": best["best_config"],
           "epochs_spent": best["search"]["epochs_spent"]}
    if method == "pbt":
        import pandas as pd

        hist = pd.read_parquet(result.run_dir / "trial_histories.parquet")
        rows = hist[hist.trial_id == best["trial_id"]].sort_values("epoch")
        out["schedule"] = [[int(r.epoch), float(r.c), float(r.beta), float(r.lr), str(r.trained_in_trial)]
                           for r in rows.itertuples()]
        glob = result.run_dir / "pbt_global.txt"
        out["exploits"] = len(glob.read_text().splitlines()) if glob.is_file() else 0
    return out


def schedules(base: dict, dataset, seed: int, tag: str, stats: groups.GroupStats) -> dict:
    """The first N fixed schedules trained with seed `seed`: the validation-best one's val and test GBA."""
    lam_max = groups.lambda_max(stats)
    runs = []
    epochs = base["optim"]["epochs"]
    for i, c in schedule_grid(base["search"]["num_samples"]):
        shape, start, end, warmup = SCHEDULES[i]
        beta, beta_end = groups.beta_of(start * lam_max, c), groups.beta_of(end * lam_max, c)
        over = [f"name={tag}-sched{i}-c{c:g}-s{seed}", f"seed={seed}", f"method.c={c}",
                f"method.beta={beta!r}", f"method.beta_schedule={shape}", f"method.beta_end={beta_end!r}",
                f"method.warmup_epochs={round(warmup * epochs)}"]
        r = train(load_spec(base, over), dataset=dataset)
        runs.append({"schedule": f"{shape} lambda {start:g} -> {end:g} x lambda_max"
                                 + (f" after {round(warmup * epochs)} epochs" if warmup else "")
                                 + f", c {c:g}", "beta": beta, "beta_end": beta_end,
                     "val": r["val_gba"], "test": r["test_gba"], "best_epoch": r["best_epoch"],
                     "status": r["status"]})
    ok = [r for r in runs if r["val"] is not None]
    best = max(ok, key=lambda r: r["val"])
    return {"val": best["val"], "test": best["test"], "best_epoch": best["best_epoch"],
            "config": best["schedule"], "epochs_spent": len(runs) * epochs, "runs": runs}


def run_dataset(dataset: str, args, record: dict) -> None:
    """Every method and seed of one dataset; the record rewritten after each cell."""
    trials, epochs, interval = QUICK if args.quick else BUDGET[dataset]
    custom = (args.trials or trials, args.epochs or epochs, args.interval or interval)
    tag = f"dyn-{dataset}{'-quick' if args.quick else ''}"
    if custom != (trials, epochs, interval):  # its own runs and cells
        trials, epochs, interval = custom
        tag += f"-n{trials}-e{epochs}-i{interval}"
    base = base_spec(dataset, args, trials, epochs)
    data = load_dataset(load_spec(base).data)
    stats = training_stats(data)
    cells = record["cells"]
    for seed in args.seeds:
        for method in args.methods:
            key = f"{tag}/{method}/s{seed}"
            t0 = time.perf_counter()
            cell = (schedules(base, data, seed, tag, stats) if method == "schedules"
                    else searched(method, base, data, seed, tag, interval))
            # a recorded cell finished before: a rerun reuses its runs, keep the wall time that trained them
            cell["wall_s"] = cells.get(key, {}).get("wall_s", time.perf_counter() - t0)
            cell.update(dataset=dataset, method=method, seed=seed, trials=trials, epochs=epochs,
                        interval=interval, quick=args.quick)
            cells[key] = cell
            print(f"{key}: val GBA {100 * cell['val']:.2f}, test GBA {100 * cell['test']:.2f}, "
                  f"{cell['epochs_spent']} epochs ({time.perf_counter() - t0:.0f} s)", flush=True)
            _write_json(args.out.with_suffix(".json"), record)


def render(record: dict) -> str:
    """The table: per dataset and method, test and validation GBA mean +- std over the seeds."""
    groups_: dict[tuple, list[dict]] = {}
    for cell in record["cells"].values():
        key = (cell["dataset"], cell["quick"], cell["trials"], cell["epochs"], cell["interval"])
        groups_.setdefault(key, []).append(cell)
    lines = ["# A beta that moves during training: static TPE vs PBT vs fixed schedules", "",
             "Each method spends N trials x E epochs and keeps the trial (or schedule) with the best "
             "validation GBA; shown: its test GBA (and validation GBA) % at its validation-selected epoch, "
             "mean +- std (ddof 0) over the seeds, and the epochs actually trained (PBT: every trial's "
             "reports; a trial that copies a donor ahead of it skips epochs). tpe: Optuna TPE, FIFO, beta "
             "constant per trial; pbt: Population Based Training over lambda = c (beta + 1) and c, "
             "asynchronous; schedules: the best of N fixed beta_schedule runs (shapes x c 0.5 and 1: "
             "SCHEDULES in benchmarks/dynamic_beta.py). Optuna's TPE draws its first 10 trials at random "
             "(n_startup_trials), with the same seeded RandomSampler that draws PBT's first population: with "
             "N <= 10 the tpe row is a random search over the same N configurations PBT starts from, so the "
             "difference between the two is what PBT's copies and perturbations add.",
             "", f"Machine: {record.get('machine')}; {record.get('versions')}. Wall times follow the "
             "machine's load (other benchmarks shared its 2 cores for some cells) and the search's own "
             "speed-ups (trial actors reused since some cells): compare epochs, not minutes.", ""]
    for (dataset, quick, trials, epochs, interval), cells in sorted(groups_.items()):
        lines += [f"## {dataset}{' (--quick)' if quick else ''}: N = {trials} trials x E = {epochs} epochs, "
                  f"PBT interval {interval}", "",
                  "| method | seeds | test GBA | val GBA | epochs trained | wall (min) |",
                  "|---|---|---|---|---|---|"]
        for method in METHODS:
            rows = sorted((c for c in cells if c["method"] == method), key=lambda c: c["seed"])
            if not rows:
                continue
            test, val = np.array([c["test"] for c in rows]), np.array([c["val"] for c in rows])
            lines.append(f"| {method} | {', '.join(str(c['seed']) for c in rows)} | "
                         f"{100 * test.mean():.2f} +- {100 * test.std():.2f} | "
                         f"{100 * val.mean():.2f} +- {100 * val.std():.2f} | "
                         f"{np.mean([c['epochs_spent'] for c in rows]):.0f} | "
                         f"{sum(c['wall_s'] for c in rows) / 60:.1f} |")
        lines += ["", "Selected per seed:", ""]
        for c in sorted(cells, key=lambda c: (METHODS.index(c["method"]), c["seed"])):
            what = c["config"] if isinstance(c["config"], str) else ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in c["config"].items())
            extra = ""
            if c["method"] == "pbt":
                betas = [f"{b:.3g}" for _, _, b, _, _ in c["schedule"]]
                changes = [betas[0]] + [b for a, b in zip(betas, betas[1:], strict=False) if a != b]
                extra = (f"; {c['exploits']} exploits in the search; its beta over the epochs: "
                         f"{' -> '.join(changes)}")
            lines.append(f"- {c['method']} seed {c['seed']}: test {100 * c['test']:.2f}, val "
                         f"{100 * c['val']:.2f} (epoch {c['best_epoch']}): {what}{extra}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Run (or resume) the cells asked for; write the record and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["colored_digits"], choices=sorted(SPECS))
    parser.add_argument("--mnist", default=None, help="folder holding MNIST/raw (colored_mnist)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--storage", default=str(ROOT / "runs" / "bench-dynamic-beta"))
    parser.add_argument("--out", default=str(RESULTS / "dynamic_beta"), help="record path, no suffix")
    parser.add_argument("--quick", action="store_true", help=f"N, E, interval = {QUICK} and seed 1 only")
    parser.add_argument("--trials", type=int, default=None, help="N instead of the dataset's (BUDGET)")
    parser.add_argument("--epochs", type=int, default=None, help="E instead of the dataset's (BUDGET)")
    parser.add_argument("--interval", type=int, default=None, help="PBT's perturbation interval")
    args = parser.parse_args()
    if args.quick and args.seeds == [1, 2, 3]:
        args.seeds = [1]
    args.out = Path(args.out)
    path = args.out.with_suffix(".json")
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.setdefault("cells", {})
    record.update(machine=f"{platform.machine()}, {platform.processor() or 'cpu'}, python "
                          f"{platform.python_version()}", versions=_versions())
    for dataset in args.datasets:
        run_dataset(dataset, args, record)
    args.out.with_suffix(".md").write_text(render(record))
    print(render(record))


if __name__ == "__main__":
    main()
