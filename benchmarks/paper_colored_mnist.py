"""The paper's Colored MNIST table (its Table 1) reproduced with gerne-ray's own commands, on real MNIST.

Rows, at every conflict ratio (0.5, 1, 2, 5%), each from the spec in jobs/paper/ (the paper's
settings; `data.root` and `storage.path` set here):
- ERM (class-balanced, GERNE at beta = -1) and resampling (GERNE at c = 1, beta = 0): `train`
  with seeds 1-3;
- GERNE, known attributes: `gerne-ray tune jobs/paper/colored_mnist_<r>pct.yaml` (c in {0.5, 1},
  beta inside its bounds, TPE + ASHA), the best configuration retrained with seeds 1-3;
- GERNE, unknown attributes: `gerne-ray tune jobs/paper/colored_mnist_<r>pct_unknown.yaml` (t, c and
  beta searched on pseudo-groups; attribute labels on the validation split only);
- the baselines of benchmarks/baselines_colored_mnist.py where it ran that ratio (its own settings).
Two columns per ratio and row, test GBA %, mean +- std (ddof 0) over the 3 seeds:
- "val": the epoch (and, for a search, the trial) selected by validation GBA: the honest protocol;
- "test": the epoch, and the trial of the search, with the best test GBA: the protocol of the
  paper's rows that tuned on test; the search's test-best configuration is retrained with the
  same seeds when it is not the validation-best one.

    python benchmarks/paper_colored_mnist.py --mnist ../shared/data/mnist           # the table (hours)
    python benchmarks/paper_colored_mnist.py --mnist ../shared/data/mnist --quick   # 0.5% only

Runs in the background and resumes: every run and search lives under --storage and is reused; the
record (benchmarks/results/paper_colored_mnist.json, with machine, versions and wall times) is
rewritten after every row, the table (.md) at the end of every call.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from baselines_colored_mnist import best_test  # noqa: E402

from gerne_ray.results import atomic_write  # noqa: E402
from gerne_ray.spec import load_spec  # noqa: E402
from gerne_ray.training import train  # noqa: E402
from gerne_ray.tuning import tune  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RATIOS = (0.005, 0.01, 0.02, 0.05)
ROWS = ("erm", "resample", "gerne", "gerne-unknown")
LABELS = {"erm": "ERM", "resample": "resampling", "gerne": "GERNE (tuned)",
          "gerne-unknown": "GERNE, unknown attributes (tuned)"}
# the paper's Table 1 (gerne-method.md section 9), test GBA %
PAPER = {
    "erm": (35.19, 52.09, 65.86, 82.17),
    "resample": (77.68, 84.36, 88.15, 91.98),
    "gerne": (77.79, 84.47, 88.30, 92.16),
    "gerne-unknown": (77.25, 83.98, 87.41, 90.98),
    "groupdro": (63.12, 68.78, 76.30, 84.20),
    "jtt": (53.03, 62.90, 74.23, 84.03),
    "lff": (52.50, 61.89, 71.03, 84.79),
}
# the paper's standard deviations that gerne-method.md and the issue give: GERNE 0.90 at 0.5%; the
# rest are "about 0.1-1 for GERNE and resampling": the lenient 1.0 is used where none is given
PAPER_STD = {("gerne", 0.005): 0.90, ("resample", 0.005): 0.89}
SEEDS = (1, 2, 3)  # tune's final seeds for a spec with seed 0 and search.final_seeds 3


def pct(ratio: float) -> str:
    """0.005 -> '0.5', 0.01 -> '1' (the jobs/paper file names)."""
    return f"{100 * ratio:g}"


def paper_spec(ratio: float, unknown: bool, args) -> dict:
    """The jobs/paper spec of this ratio, with the MNIST folder, storage, and the overrides asked for."""
    path = ROOT / "jobs" / "paper" / f"colored_mnist_{pct(ratio)}pct{'_unknown' if unknown else ''}.yaml"
    over = [f"data.root={args.mnist}", f"storage.path={args.storage}"]
    if args.epochs:
        over.append(f"optim.epochs={args.epochs}")
    if args.trials:
        over.append(f"search.num_samples={args.trials}")
    return load_spec(path, over).model_dump(mode="json")


def config_overrides(config: dict) -> list[str]:
    """The overrides that fix a searched configuration: method.c, beta, t; optim.lr, weight_decay."""
    over = [f"method.{k}={v}" for k, v in config.items() if k in ("c", "beta", "t")]
    return over + [f"optim.{k}={v}" for k, v in config.items() if k in ("lr", "weight_decay")]


def fixed_rows(name: str, ratio: float, args) -> dict:
    """ERM or resampling: train with every seed; the validation- and test-selected test GBA."""
    base = paper_spec(ratio, False, args)
    out = {"val": [], "test": [], "runs": []}
    for seed in SEEDS:
        spec = load_spec(base, [f"method.name={name}", f"name={name}-{pct(ratio)}-s{seed}", f"seed={seed}"])
        r = train(spec)
        out["val"].append(r["test_gba"])
        out["test"].append(best_test(spec.folder.local))
        out["runs"].append({"seed": seed, "status": r["status"], "best_epoch": r["best_epoch"]})
    return out


def searched_rows(ratio: float, unknown: bool, args) -> dict:
    """A GERNE search (tune, best retrained with the final seeds) and its test-selected counterpart."""
    base = paper_spec(ratio, unknown, args)
    name = f"gerne-{pct(ratio)}{'-unknown' if unknown else ''}"
    spec = load_spec(base, [f"name={name}"])
    result = tune(spec)
    best = result.best
    run_dir = spec.folder.local
    final = best["final_seeds"]
    out = {"val": [r["test_gba"] for r in final["runs"]], "config": best["best_config"],
           "search": best["search"], "runs": final["runs"]}
    hist = pd.read_parquet(run_dir / "trial_histories.parquet")
    search = hist[hist["stage"] == "search"].dropna(subset=["test_gba"])
    test_best = search.loc[search["test_gba"].idxmax(), "trial_id"]
    if test_best == best["trial_id"]:  # the validation-best trial: its final seeds, epochs chosen by test
        final_ids = [r["trial_id"] for r in final["runs"]]
        out["test"] = [float(hist[hist["trial_id"] == t]["test_gba"].max()) for t in final_ids]
        out["test_config"] = out["config"]
    else:  # retrain the test-best configuration with the same seeds
        trials = result.trials
        row = trials[trials["trial_id"] == test_best].iloc[0]
        keys = ("c", "beta", "t", "lr", "weight_decay")
        config = {k: row[k] for k in keys if k in row and pd.notna(row[k])}
        out["test_config"] = {k: float(v) for k, v in config.items()}
        out["test"] = []
        for seed in SEEDS:
            s = load_spec(base, [*config_overrides(config), f"name={name}-testsel-s{seed}", f"seed={seed}"])
            train(s)
            out["test"].append(best_test(s.folder.local))
    return out


def baseline_rows(ratio: float) -> dict[str, dict]:
    """The baselines benchmark's rows at this ratio (validation-selected; test-selected where recorded)."""
    path = RESULTS / "baselines_colored_mnist.json"
    if not path.is_file():
        return {}
    out: dict[str, dict] = {}
    for r in json.loads(path.read_text())["runs"].values():
        if r["ratio"] != ratio or r["method"] in ROWS or r["test_gba"] is None:
            continue
        row = out.setdefault(r["method"], {"val": [], "test": [], "from": "baselines_colored_mnist"})
        row["val"].append(r["test_gba"])
        if r.get("test_gba_by_test") is not None:
            row["test"].append(r["test_gba_by_test"])
    return out


def main() -> None:
    """Run (or resume) every row at every ratio and write the record and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", required=True, help="folder holding MNIST/raw (e.g. ../shared/data/mnist)")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--epochs", type=int, default=None, help="override the specs' optim.epochs (64)")
    parser.add_argument("--trials", type=int, default=None, help="override search.num_samples (16)")
    parser.add_argument("--storage", default="runs/bench-paper-cmnist")
    parser.add_argument("--out", default=str(RESULTS / "paper_colored_mnist"), help="record path, no suffix")
    parser.add_argument("--quick", action="store_true", help="0.5%% only")
    args = parser.parse_args()
    args.mnist = str(Path(args.mnist).resolve())
    if args.quick:
        args.ratios = [0.005]
    out = Path(args.out)
    record = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    record.setdefault("cells", {})
    record.update(machine=f"{platform.machine()}, {platform.processor() or 'cpu'}, python "
                          f"{platform.python_version()}", versions=_versions(),
                  settings={"epochs": args.epochs or "spec (64)", "trials": args.trials or "spec (16)"})
    for ratio in args.ratios:
        for name in args.rows.split(","):
            key = f"{name}/{ratio}"
            t0 = time.perf_counter()
            cell = (fixed_rows(name, ratio, args) if name in ("erm", "resample")
                    else searched_rows(ratio, name == "gerne-unknown", args))
            previous = record["cells"].get(key, {})
            # a rerun reuses finished runs: keep the wall time of the call that trained them
            cell["wall_s"] = max(previous.get("wall_s", 0.0), time.perf_counter() - t0)
            record["cells"][key] = cell
            print(f"{key}: val-selected {_fmt(cell['val'])}, test-selected {_fmt(cell['test'])} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            _write_json(out.with_suffix(".json"), record)
    out.with_suffix(".md").write_text(render(record))
    print(render(record))


def _write_json(path: Path, record: dict) -> None:
    text = json.dumps(record, indent=1, default=float) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _versions() -> dict:
    import optuna
    import ray
    import torch

    return {"torch": torch.__version__, "ray": ray.__version__, "optuna": optuna.__version__}


def _fmt(values: list) -> str:
    v = np.array([100 * x for x in values if x is not None], dtype=float)
    return f"{v.mean():.2f} +- {v.std():.2f}" if len(v) else ""


def verdict(name: str, ratio: float, values: list) -> str:
    """'ok' when the mean is at least the paper's mean - 1 std, else the shortfall in points."""
    if name not in PAPER or not values:
        return ""
    paper = PAPER[name][RATIOS.index(ratio)] if ratio in RATIOS else None
    if paper is None:
        return ""
    mean = 100 * float(np.mean(values))
    floor = paper - PAPER_STD.get((name, ratio), 1.0)
    return "ok" if mean >= floor else f"{mean - floor:+.2f}"


def render(record: dict) -> str:
    """Two tables (selected by validation, by test), each cell beside the paper's number."""
    cells = record["cells"]
    ratios = sorted({float(k.split("/")[1]) for k in cells})
    names = list(dict.fromkeys(k.split("/")[0] for k in cells))
    baselines = {q: baseline_rows(q) for q in ratios}
    names += [n for n in dict.fromkeys(n for q in ratios for n in baselines[q]) if n not in names]
    wall = sum(c.get("wall_s", 0.0) for c in cells.values())
    lines = ["# The paper's Colored MNIST table, real MNIST", "",
             "Test GBA %, mean +- std (ddof 0) over seeds 1-3; paper = the GERNE paper's Table 1. Specs: "
             "jobs/paper/colored_mnist_*pct[_unknown].yaml (settings: "
             f"{record.get('settings')}); baselines from benchmarks/baselines_colored_mnist.py (its own "
             f"settings, seeds 0-2). Machine: {record.get('machine')}; {record.get('versions')}; "
             f"{wall / 60:.0f} min of runs.", ""]
    for column, title in (("val", "Selected by validation GBA (epoch and trial): the primary protocol"),
                          ("test", "Selected by test GBA (epoch and trial): the protocol of the paper's "
                                   "rows tuned on test; not a fair estimate")):
        lines += [f"## {title}", "",
                  "| method | " + " | ".join(f"{pct(q)}% | paper" for q in ratios) + " |",
                  "|---|" + "---|---|" * len(ratios)]
        for name in names:
            row = []
            for q in ratios:
                cell = cells.get(f"{name}/{q}") or baselines[q].get(name) or {}
                values = cell.get(column, [])
                ok = verdict(name, q, values) if column == "val" and name in ROWS else ""
                paper = PAPER.get(name.split("-")[0] if name not in PAPER else name)
                pub = paper[RATIOS.index(q)] if paper and q in RATIOS else None
                row += [_fmt(values) + (f" ({ok})" if ok else ""), "" if pub is None else f"{pub:.2f}"]
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["(ok): the mean is at least the paper's mean minus its std (0.90 for GERNE and 0.89 for "
              "resampling at 0.5%, else 1.0); otherwise the shortfall in points.", "",
              "## Selected configurations", "",
              "| search | by validation | by test | trials (stopped, diverged, error) |",
              "|---|---|---|---|"]
    for key, cell in cells.items():
        if "config" in cell:
            s = cell["search"]
            lines.append(f"| {key} | {_cfg(cell['config'])} | {_cfg(cell.get('test_config', {}))} | "
                         f"{s['trials']} ({s['stopped']}, {s['diverged']}, {s.get('error', 0)}) |")
    if record.get("notes"):  # what a reader needs beside the numbers: shortfalls, incidents (a list of lines)
        lines += ["", "## Notes", "", *(f"- {note}" for note in record["notes"])]
    return "\n".join(lines) + "\n"


def _cfg(config: dict) -> str:
    keys = ("t", "c", "beta", "lambda", "lr", "weight_decay")
    return ", ".join(f"{k} = {float(config[k]):.4g}" for k in keys if config.get(k) is not None)


if __name__ == "__main__":
    main()
