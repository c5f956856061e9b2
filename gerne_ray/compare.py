"""Comparing methods under the same budget: `gerne-ray compare SPEC --methods erm,groupdro,...,gerne`.

Every method is searched over its own space (`Method.suggest`, plus search.space's lr and weight
decay) by `gerne_ray.tuning.tune` with the spec's number of trials, epochs and scheduler, on the same
Ray cluster; its best configuration is trained again with the same `search.final_seeds` new seeds.
A method with nothing to search (erm and resample unless search.space gives lr or weight decay) runs
its one configuration as a single trial. Each method's search lives in `<storage>/<name>/<method>/`
(its own report.md, best.json, trials) and resumes like `tune`; rerunning the comparison reuses every
finished search.

Files in `<storage>/<name>/`: compare.parquet (one row per method and seed: the selected epoch's
validation and test metrics and the selected configuration), compare.md (mean +- std of every test
metric and the configuration of each method), plots/compare.png, and compare.html (gerne_ray.report_html:
the same, self-contained, with each method's per-group test accuracy side by side).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gerne_ray import methods, results
from gerne_ray.errors import GerneError
from gerne_ray.results import METRIC_KEYS, METRIC_NAMES
from gerne_ray.spec import JobSpec, SpecLike, load_spec, missing_labels

COMPARE_FILES = ("compare.parquet", "compare.md", "compare.html", "plots")


@dataclass
class CompareResult:
    """What `compare` returns: one row per method and seed, and where the files are."""

    rows: list[dict]
    run_dir: Path  # the local folder with the files (for a URI storage: its local mirror)
    location: str  # the run folder: a path or a URI

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """Per method, (mean, std) over its seeds of every validation and test metric."""
        return {m: stats(rows) for m, rows in by_method(self.rows).items()}


def parse_methods(text: str | list[str]) -> list[str]:
    """The method names of `--methods a,b,c`, each registered, none twice."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in methods.names()]
    if unknown or not names:
        raise GerneError(f"--methods: {', '.join(unknown) or 'none given'}: use registered methods, comma "
                         f"separated, from: {', '.join(methods.names())} (`gerne-ray methods` lists them)")
    if len(set(names)) != len(names):
        raise GerneError(f"--methods: {text} names a method twice; name each once")
    return names


def method_spec(base: JobSpec, name: str) -> JobSpec:
    """The base spec for one method: the base's method section if it is that method, else its defaults;
    the run folder `<storage>/<name>/<method>/`."""
    section = base.method.model_dump(mode="json") if base.method.name == name else {"name": name}
    return load_spec(base, [f"method={json.dumps(section)}", f"name={name}",
                            f"storage.path={base.folder.location}"])


def run_rows(method: str, best: dict) -> list[dict]:
    """compare.parquet's rows of one method: one per final seed (or the best trial when there are none)."""
    config = json.dumps(best["best_config"], sort_keys=True)
    final = best.get("final_seeds")
    runs = final["runs"] if final else [{**{k: best[k] for k in METRIC_KEYS}, "seed": best["seed"],
                                         "trial_id": best["trial_id"], "status": best["status"],
                                         "best_epoch": best["best_epoch"]}]
    return [{"method": method, "seed": r["seed"], "trial_id": r["trial_id"], "status": r["status"],
             "best_epoch": r["best_epoch"], **{k: r[k] for k in METRIC_KEYS}, "config": config,
             "selected_trial": best["trial_id"], "selection_metric": best["selection_metric"]}
            for r in runs]


def by_method(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows grouped by method, in their order."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r)
    return out


def stats(rows: list[dict]) -> dict[str, tuple[float, float] | None]:
    """(mean, std with ddof 0) of every metric over rows, None where no row has it."""
    out: dict[str, tuple[float, float] | None] = {}
    for k in METRIC_KEYS:
        v = np.array([r[k] for r in rows if r[k] is not None], dtype=float)
        out[k] = (float(v.mean()), float(v.std())) if len(v) else None
    return out


def render_markdown(spec: JobSpec, rows: list[dict], wall_s: float) -> str:
    """compare.md: mean +- std of every test metric per method, then each method's configuration."""
    groups = by_method(rows)
    seeds = sorted({r["seed"] for r in rows})
    names = [f"test {m}" for m in METRIC_NAMES]
    metrics = spec.search.metrics
    selection = " and ".join(metrics) + (" (their Pareto front, search.select)" if len(metrics) > 1 else "")
    lines = [
        f"# {spec.name}: methods compared on {spec.data.dataset}",
        "",
        f"Each method searched with {spec.search.num_samples} trials (one where it has nothing to search), "
        f"{spec.optim.epochs} epochs, scheduler {spec.search.scheduler}, selection by "
        f"{selection}; the best configuration trained again with seeds {seeds}. mean +- std "
        f"(ddof 0) over those seeds, each run at the epoch selected by {spec.search.primary}. "
        f"Wall time {wall_s:.0f} s.",
        "",
        "| method | " + " | ".join(names) + f" | {' | '.join(metrics)} |",
        "|---|" + "---|" * (len(names) + len(metrics)),
    ]
    for method, rs in groups.items():
        s = stats(rs)
        cells = [_cell(s[f"test_{m}"]) for m in METRIC_NAMES] + [_cell(s[m]) for m in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "## Selected configurations", "", "| method | trial | configuration |", "|---|---|---|"]
    for method, rs in groups.items():
        lines.append(f"| {method} | {rs[0]['selected_trial']} | {rs[0]['config']} |")
    lines += ["", "Each method's search report: `<method>/report.md` in this folder.", "",
              "![compare](plots/compare.png)", ""]
    return "\n".join(lines)


def _cell(value: tuple[float, float] | None) -> str:
    return "" if value is None else f"{100 * value[0]:.2f} +- {100 * value[1]:.2f}"


def figure_compare(rows: list[dict]):
    """Test GBA and WGA per method, mean with std error bars and every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_method(rows)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) + 2), 4.0), layout="constrained")
    width = 0.38
    for i, key in enumerate(("test_gba", "test_wga")):
        xs = np.arange(len(groups)) + (i - 0.5) * width
        means = [100 * (stats(rs)[key] or (np.nan, 0))[0] for rs in groups.values()]
        stds = [100 * (stats(rs)[key] or (0, np.nan))[1] for rs in groups.values()]
        ax.bar(xs, means, width=width, yerr=stds, capsize=3, label=key.replace("_", " "))
        for x, rs in zip(xs, groups.values(), strict=True):
            ax.scatter([x] * len(rs), [100 * r[key] if r[key] is not None else np.nan for r in rs],
                       color="black", s=8, zorder=3)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("test accuracy at the epoch selected on validation (mean +- std over seeds)")
    ax.legend(fontsize=8)
    return fig


def write_plot_and_html(spec: JobSpec, rows: list[dict], wall_s: float, bests: dict[str, dict],
                        run_dir: Path) -> None:
    """plots/compare.png and compare.html (the same figure inline, with each method's test heatmap)."""
    from gerne_ray import report_html
    from gerne_ray.report import gc_paused, save_png

    with gc_paused():
        fig = figure_compare(rows)
        svg = report_html.svg_of(fig, "compare")
        save_png(fig, run_dir / "plots" / "compare.png")
        report_html.write_html(run_dir / report_html.COMPARE_HTML,
                               report_html.render_compare(spec, rows, wall_s, bests, svg))


def compare(spec: SpecLike, method_names: str | list[str], overrides: list[str] | None = None,
            dataset=None) -> CompareResult:
    """Search every method with the spec's budget, retrain each best with the final seeds, tabulate."""
    from gerne_ray.data import load_dataset
    from gerne_ray.training import claim_run_dir, prepare
    from gerne_ray.tuning import searches_anything, tune

    base = load_spec(spec, overrides)
    names = parse_methods(method_names)
    refused = [f"{n} ({missing_labels(n, base.data)})" for n in names if missing_labels(n, base.data)]
    if refused:
        raise GerneError(f"--methods: cannot run with data.attributes {base.data.attributes} and "
                         f"data.attribute_labels {base.data.attribute_labels}: " + "; ".join(refused))
    specs = [method_spec(base, n) for n in names]
    start = time.perf_counter()
    folder = base.folder
    folder.check_writable()
    claim_run_dir(base)
    print(f"gerne-ray compare {base.name}: {', '.join(names)} on {base.data.dataset}, "
          f"{base.search.num_samples} trials each; results in {folder.location}", flush=True)
    dataset = dataset if dataset is not None else load_dataset(base.data)  # loaded once for every method
    rows: list[dict] = []
    bests: dict[str, dict] = {}
    for mspec in specs:
        fixed = not searches_anything(mspec, prepare(mspec, dataset, check_method=False))
        if fixed:
            mspec = load_spec(mspec, ["search.num_samples=1"])  # nothing to vary: one trial
        print(f"{mspec.method.name}:", flush=True)
        bests[mspec.method.name] = tune(mspec, dataset=dataset, allow_fixed=fixed).best
        rows += run_rows(mspec.method.name, bests[mspec.method.name])
    run_dir = folder.local
    wall_s = time.perf_counter() - start
    results.write_rows_parquet(run_dir / "compare.parquet", rows)
    write_plot_and_html(base, rows, wall_s, bests, run_dir)
    text = render_markdown(base, rows, wall_s)
    results.atomic_write(run_dir / "compare.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    folder.push(*COMPARE_FILES)
    return CompareResult(rows, run_dir, folder.location)


__all__ = ["compare", "CompareResult", "parse_methods"]
