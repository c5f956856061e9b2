"""The search report: report.md and plots, rendered from a run folder's files alone.

`write_report(run_dir)` reads trials.parquet, trial_histories.parquet and best.json (written by
gerne_ray.tuning) and writes report.md and PNG plots under plots/: the selection metric against
the searched value (beta for GERNE, the first searched hyperparameter of another method) over all
trials, the best trial's per-group accuracies as a class x attribute heatmap, and learning curves;
where a trial's beta or c moved during training (a beta_schedule, PBT), beta and lambda per epoch of
every trial (plots/beta_schedule.png, with the bounds and PBT's exploits);
for a multi-metric search also the Pareto front (plots/pareto.png: every trial a point in the plane
of the first two metrics, the front highlighted and joined, the selected trial ringed).
The same figures, as inline SVG, make report.html (gerne_ray.report_html), one self-contained file.
It names no method. `gerne-ray report RUN_DIR` calls it again, e.g. after a change to this module.
"""

from __future__ import annotations

import contextlib
import gc
import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from gerne_ray import pareto, results
from gerne_ray.errors import GerneError

PLOTS = ("best_groups.png", "learning_curves.png")  # plus metric_vs_<searched value>.png
PARETO_PLOT = "pareto.png"  # a multi-metric search's Pareto front
SCHEDULE_PLOT = "beta_schedule.png"  # beta and lambda per epoch, where they move (a beta_schedule, PBT)
TABLES = ("trials.parquet", "trial_histories.parquet", "best.json")
STATUS_MARKERS = {"completed": "o", "stopped": "v", "diverged": "x", "error": "s"}


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{100 * value:.2f}"


def load_run(run_dir: Path) -> tuple[list[dict], list[dict], dict]:
    """trials.parquet, trial_histories.parquet and best.json of a run folder."""
    missing = [f for f in TABLES if not (run_dir / f).is_file()]
    if missing:
        raise GerneError(
            f"{run_dir}: {', '.join(missing)} missing; pass the folder of a finished `gerne-ray tune` "
            "(resume an unfinished one with `gerne-ray resume`)"
        )
    try:
        trials = pq.read_table(run_dir / "trials.parquet").to_pylist()
        histories = pq.read_table(run_dir / "trial_histories.parquet").to_pylist()
        best = results.read_json(run_dir / "best.json")
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise GerneError(
            f"{run_dir}: cannot read its tables ({first}); rerun the search with `gerne-ray resume {run_dir}`"
        ) from None
    return trials, histories, best


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off while figures are built and drawn: their thousands of
    artists set off collections that walk every object of the process (a search's driver holds Ray's
    and torch's), a fifth of the report's time. Collection resumes after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def save_png(fig, path: Path) -> None:
    """Write the figure as a PNG (atomically) and close it. Every figure here lays itself out
    (constrained layout): no `bbox_inches="tight"`, whose extra draw measured every text again."""
    import matplotlib.pyplot as plt

    results.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def trials_text(n: int) -> str:
    """`1 trial`, `2 trials`."""
    return f"{n} trial{'' if n == 1 else 's'}"


def floors_text(subject_to: dict) -> str:
    """search.select's floors in words, each after a comma: `, val_wga >= 50%`."""
    return "".join(f", {m} >= {100 * v:.4g}%" for m, v in subject_to.items())


def objective_metrics(best: dict) -> list[str]:
    """The searched metrics: several in a multi-objective search, else the one that selects."""
    return list((best.get("selection") or {}).get("metrics") or [best["selection_metric"]])


def selection_text(best: dict) -> str:
    """How the best trial was selected, in words: by one metric, or from the Pareto front by search.select."""
    metrics = objective_metrics(best)
    if len(metrics) == 1:
        return f"selection by {metrics[0]}"
    sel = best["selection"]
    size = trials_text(len(best["pareto_front"]))
    return (f"selection from the Pareto front of {', '.join(metrics)} ({size}) by the largest "
            f"{sel['maximize']}{floors_text(sel['subject_to'])}; each trial's epoch by {metrics[0]}")


def front_gid(trial_id: str) -> str:
    """The SVG id of a Pareto front trial's marker (report.html gives it a tooltip)."""
    return "front-" + "".join(ch if ch.isalnum() or ch in "_-" else "-" for ch in str(trial_id))


def front_titles(best: dict) -> dict[str, str]:
    """Each Pareto front marker's tooltip: the trial, its configuration and its metrics."""
    metrics = objective_metrics(best)
    out = {}
    for e in best.get("pareto_front") or []:
        cfg = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in e["config"].items())
        values = ", ".join(f"{m} {_pct(e[m])}" for m in metrics)
        mark = "; selected" if e["trial_id"] == best["trial_id"] else ""
        out[front_gid(e["trial_id"])] = (
            f"trial {e['trial_id']} (epoch {e['best_epoch']}): {values}; test GBA {_pct(e['test_gba'])}, "
            f"test WGA {_pct(e['test_wga'])}; {cfg}{mark}")
    return out


def figure_pareto(trials: list[dict], best: dict):
    """Every trial as a point in the plane of the first two searched metrics (selected epochs); the
    Pareto front highlighted and joined, the selected trial ringed in red, select's floors dashed."""
    import matplotlib.pyplot as plt

    metrics = objective_metrics(best)
    x, y = metrics[:2]
    on_front = {e["trial_id"] for e in best.get("pareto_front") or []}
    points = [t for t in trials if t["status"] != "error" and pareto.usable(t, (x, y))]
    others = [t for t in points if t["trial_id"] not in on_front]
    front = sorted((t for t in points if t["trial_id"] in on_front), key=lambda t: (t[x], -t[y]))
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    ax.scatter([100 * t[x] for t in others], [100 * t[y] for t in others], color="grey", alpha=0.6,
               label=f"trial ({len(others)} dominated)", gid="dominated")
    ax.plot([100 * t[x] for t in front], [100 * t[y] for t in front], color="tab:orange", linewidth=1.5,
            zorder=2, gid="front-line")
    for i, t in enumerate(front):
        ax.scatter([100 * t[x]], [100 * t[y]], color="tab:orange", edgecolors="black", s=50, zorder=3,
                   label=f"Pareto front ({len(front)})" if i == 0 else None, gid=front_gid(t["trial_id"]))
    if isinstance(best.get(x), int | float) and isinstance(best.get(y), int | float):
        ax.scatter([100 * best[x]], [100 * best[y]], s=260, facecolors="none", edgecolors="red", linewidths=2,
                   zorder=4, label=f"selected ({best['trial_id']})", gid="selected")
    floors = (best.get("selection") or {}).get("subject_to") or {}
    for metric, line in ((x, ax.axvline), (y, ax.axhline)):
        if metric in floors:
            line(100 * floors[metric], color="red", linestyle="--", linewidth=1,
                 label=f"floor {metric} >= {100 * floors[metric]:.4g}%")
    ax.set_xlabel(f"{x} (%), selected epoch")
    ax.set_ylabel(f"{y} (%), selected epoch")
    more = f"; front over all {len(metrics)} metrics" if len(metrics) > 2 else ""
    ax.set_title(f"{best['name']}: Pareto front of {len(points)} trials{more}", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def swept_key(best: dict) -> str | None:
    """The configuration value the metric is plotted against: beta when searched, else the first searched."""
    keys = [k for k in best["best_config"] if k not in ("seed", "lambda")]
    return "beta" if "beta" in keys else (keys[0] if keys else None)


def figure_metric_vs_param(trials: list[dict], best: dict, key: str):
    """Each trial's selected validation metric against one configuration value, marked by status
    (coloured by c where c varies); against beta, ERM, resampling and beta's bounds are drawn too."""
    import matplotlib.pyplot as plt

    metric = best["selection_metric"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    cs = sorted({t["c"] for t in trials if t.get("c") is not None})
    cmap = plt.get_cmap("viridis")
    for status, marker in STATUS_MARKERS.items():
        shown = [t for t in trials if t["status"] == status and t.get(key) is not None]
        if not shown:
            continue
        ys = [100 * (t[metric] or 0.0) for t in shown]
        colours = [cmap(cs.index(t["c"]) / max(1, len(cs) - 1)) if cs else cmap(0.3) for t in shown]
        ax.scatter([t[key] for t in shown], ys, c=colours, marker=marker, label=status)
    shown_cfg = ", ".join(f"{k} = {best[k]:.3g}" for k in ("c", key) if isinstance(best.get(k), int | float))
    ax.scatter([best[key]], [100 * best[metric]], s=200, facecolors="none", edgecolors="red",
               label=f"best ({shown_cfg})")
    if key == "beta":
        _beta_landmarks(ax, trials)
    xs = [t[key] for t in trials if isinstance(t.get(key), int | float)]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:  # log-uniform draws (lr, eta, C...)
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(f"{metric} (%), selected epoch")
    title = f"{best['name']}: {len(trials)} trials of {best.get('method', '')}"
    if len(cs) > 1:
        title += f", c from {min(cs):.3g} (dark) to {max(cs):.3g} (light)"
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def _beta_landmarks(ax, trials: list[dict]) -> None:
    """ERM (beta = -1), resampling in expectation (lambda = c (beta + 1) = 1) and beta's upper bound per c.

    The bound is each trial's exact upper bound (it follows from c and, with unknown attributes, from
    the trial's t): one dashed line per distinct bound, or a tick per trial when there are many.
    """
    low = ax.get_ylim()[0]
    ax.axvline(-1.0, color="grey", linestyle=":", linewidth=1)
    ax.text(-1.0, low, " ERM", color="grey", va="bottom", fontsize=8)
    for c in sorted({t["c"] for t in trials if isinstance(t.get("c"), int | float) and t["c"] > 0}):
        beta = 1.0 / c - 1.0
        ax.axvline(beta, color="tab:blue", linestyle=":", linewidth=1)
        ax.text(beta, low, f" resampling (c = {c:.3g})", color="tab:blue", va="bottom", rotation=90,
                fontsize=8)
    uppers = sorted({round(float(t["beta_bounds_exact"][1]), 6) for t in trials
                     if t.get("beta_bounds_exact") is not None and len(t["beta_bounds_exact"]) == 2
                     and math.isfinite(t["beta_bounds_exact"][1])})
    if 0 < len(uppers) <= 4:
        for hi in uppers:
            ax.axvline(hi, color="tab:red", linestyle="--", linewidth=1)
            ax.text(hi, low, f" bound {hi:.3g}", color="tab:red", va="bottom", rotation=90, fontsize=8)
    elif uppers:
        ax.plot(uppers, [low] * len(uppers), "|", color="tab:red", markersize=12,
                label="beta's bound per trial")


@dataclass(frozen=True)
class GroupCell:
    """One (class y, attribute a) cell of a split's per-group accuracies, with the group's training share."""

    y: int
    a: int
    n: int | None  # the split's samples of the group (None: the split has none)
    correct: int | None
    accuracy: float | None
    train_count: int | None  # None with pseudo-groups: the training groups are not (y, a) then
    alpha: float | None  # training share of class y with attribute a
    worst: bool  # at the split's lowest group accuracy (its WGA)


def pseudo_groups(best: dict) -> bool:
    """Whether the run trained on pseudo-groups (unknown attributes): train_groups are not (y, a) groups."""
    return (best.get("config") or {}).get("data", {}).get("attributes") == "unknown"


def group_cells(best: dict, split: str) -> list[list[GroupCell]]:
    """The K x A grid (rows: classes y, columns: attributes a) of the best trial's groups on one split."""
    rows = {(g["y"], g["a"]): g for g in best.get(f"{split}_groups") or []}
    train = {} if pseudo_groups(best) else {(g["y"], g["a"]): g for g in best.get("train_groups") or []}
    keys = set(rows) | set(train)
    for s in ("val", "test"):
        keys |= {(g["y"], g["a"]) for g in best.get(f"{s}_groups") or []}
    if not keys:
        return []
    num_y, num_a = max(k[0] for k in keys) + 1, max(k[1] for k in keys) + 1
    accs = [g["accuracy"] for g in rows.values() if g.get("accuracy") is not None]
    lowest = min(accs) if accs else None
    grid = []
    for y in range(num_y):
        line = []
        for a in range(num_a):
            g, t = rows.get((y, a)), train.get((y, a))
            acc = g.get("accuracy") if g else None
            line.append(GroupCell(y, a, g["n"] if g else None, g.get("correct") if g else None, acc,
                                  t["count"] if t else None, t.get("alpha") if t else None,
                                  acc is not None and acc == lowest))
        grid.append(line)
    return grid


def cell_id(split: str, y: int, a: int) -> str:
    """The SVG id of a heatmap cell (report.html gives it a tooltip)."""
    return f"cell-{split}-{y}-{a}"


def figure_group_heatmap(best: dict, splits: tuple[str, ...] = ("val", "test")):
    """The best trial's accuracy of every (y, a) group as a class x attribute heatmap per split: each
    cell labelled with its accuracy, the split's group size n and the training share alpha; the worst
    group outlined in red."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    grids = {split: group_cells(best, split) for split in splits}
    num_y = max((len(g) for g in grids.values()), default=0) or 1
    num_a = max((len(g[0]) for g in grids.values() if g), default=0) or 1
    side = max(num_y, num_a)
    cell = 1.1 if side <= 3 else 0.62 if side <= 12 else 7.5 / side  # inches
    points = 72 * cell
    big, small = min(14.0, 0.24 * points), min(9.0, 0.15 * points)
    detail = side <= 12  # n and alpha fit in a cell
    shares = any(c.alpha is not None for g in grids.values() for line in g for c in line)
    fig, axes = plt.subplots(1, len(splits), squeeze=False, layout="constrained",
                             figsize=(len(splits) * (num_a * cell + 0.8) + 0.9, num_y * cell + 1.3))
    cmap, norm = plt.get_cmap("viridis"), Normalize(0, 100)
    for ax, split in zip(axes[0], splits, strict=True):
        for line in grids[split]:
            for c in line:
                acc = None if c.accuracy is None else 100 * c.accuracy
                face = cmap(norm(acc)) if acc is not None else "#e4e4e4"
                ax.add_patch(Rectangle((c.a - 0.5, c.y - 0.5), 1, 1, facecolor=face, edgecolor="white",
                                       linewidth=0.8, hatch=None if acc is not None else "///",
                                       gid=cell_id(split, c.y, c.a)))
                ink = "white" if acc is not None and acc < 55 else "black"
                label = "none" if acc is None else (f"{acc:.1f}" if side <= 4 else f"{acc:.0f}")
                extra = []
                if detail and c.n is not None:
                    extra.append(f"n {c.n}")
                if detail and c.alpha is not None:
                    extra.append(f"\u03b1 {c.alpha:.2g}")
                lift = 0.13 * len(extra)
                ax.text(c.a, c.y - lift, label, ha="center", va="center", fontsize=big, color=ink,
                        in_layout=False)
                if extra:  # one text of a line each (lines 0.27 of a cell apart): fewer texts to lay out
                    ax.text(c.a, c.y - lift + 0.27 * (len(extra) + 1) / 2 + 0.02, "\n".join(extra),
                            ha="center", va="center", fontsize=small, color=ink, in_layout=False,
                            linespacing=0.27 * points / small)
                if c.worst:
                    ax.add_patch(Rectangle((c.a - 0.46, c.y - 0.46), 0.92, 0.92, fill=False,
                                           edgecolor="red", linewidth=2.2, zorder=5))
        ax.set_xlim(-0.5, num_a - 0.5)
        ax.set_ylim(num_y - 0.5, -0.5)
        ax.set_aspect("equal")
        ax.set_xticks(range(num_a))
        ax.set_yticks(range(num_y))
        ax.tick_params(length=0, labelsize=8)
        ax.set_xlabel("attribute a")
        ax.set_ylabel("class y")
        ax.set_title(f"{split}: GBA {_pct(best.get(f'{split}_gba'))}, WGA {_pct(best.get(f'{split}_wga'))}",
                     fontsize=10)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[0]), label="accuracy (%)",
                 shrink=0.8, aspect=30)
    how = "cell: accuracy (%)" + (", n = the split's samples" if detail else "") + (
        ", \u03b1 = training share" if detail and shares else "")
    fig.suptitle(f"best trial {best['trial_id']}: per-group accuracy at epoch {best['best_epoch']}\n"
                 f"{how}; worst group outlined in red", fontsize=9)
    return fig


def figure_learning_curves(histories: list[dict], best: dict):
    """Validation metric and training loss per epoch of every search trial; the best one in red."""
    import matplotlib.pyplot as plt

    metric = best["selection_metric"]
    by_trial: dict[str, list[dict]] = {}
    for r in histories:
        if r.get("stage", "search") == "search":
            by_trial.setdefault(r["trial_id"], []).append(r)
    fig, (ax_m, ax_l) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for trial_id, rows in by_trial.items():
        rows = sorted(rows, key=lambda r: r["epoch"])
        is_best = trial_id == best["trial_id"]
        style = {"color": "red", "linewidth": 2, "zorder": 3} if is_best else {"color": "grey", "alpha": 0.5}
        epochs = [r["epoch"] for r in rows]
        ax_m.plot(epochs, [100 * r[metric] if r.get(metric) is not None else math.nan for r in rows], **style)
        ax_l.plot(epochs, [r["loss"] if r.get("loss") is not None else math.nan for r in rows], **style)
    ax_m.set_xlabel("epoch")
    ax_m.set_ylabel(f"{metric} (%)")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("training loss\n(the back-propagated one: L_ext for GERNE)")
    ax_l.set_yscale("symlog", linthresh=1e-2)
    fig.suptitle(f"{best['name']}: learning curves of {len(by_trial)} trials (best in red)")
    return fig


def _search_rows(histories: list[dict]) -> dict[str, list[dict]]:
    """The search trials' history rows, per trial, in epoch order."""
    by_trial: dict[str, list[dict]] = {}
    for r in histories:
        if r.get("stage", "search") == "search":
            by_trial.setdefault(r["trial_id"], []).append(r)
    return {k: sorted(v, key=lambda r: r["epoch"]) for k, v in by_trial.items()}


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def schedule_moves(histories: list[dict]) -> bool:
    """Whether some search trial trained with more than one beta or c (a beta_schedule, or PBT)."""
    for rows in _search_rows(histories).values():
        for key in ("beta", "c"):
            values = {r[key] for r in rows if _number(r.get(key))}
            if len(values) > 1:
                return True
    return False


def figure_beta_schedule(histories: list[dict], best: dict):
    """beta and lambda = c (beta + 1) per epoch of every search trial (the best in red), beta's upper
    bound for each c and lambda's; a cross where a trial continued from another trial's checkpoint
    (PBT's exploit: the epochs before it were trained by that trial)."""
    import matplotlib.pyplot as plt

    by_trial = _search_rows(histories)
    fig, (ax_b, ax_l) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    exploit_label = "continued from another trial's checkpoint"
    for trial_id, rows in by_trial.items():
        rows = [r for r in rows if _number(r.get("beta")) and _number(r.get("c"))]
        if not rows:
            continue
        is_best = trial_id == best["trial_id"]
        style = {"color": "red", "linewidth": 2, "zorder": 3} if is_best else {"color": "grey", "alpha": 0.6}
        epochs = [r["epoch"] for r in rows]
        lams = [r["c"] * (r["beta"] + 1.0) for r in rows]
        ax_b.plot(epochs, [r["beta"] for r in rows], drawstyle="steps-mid", **style)
        ax_l.plot(epochs, lams, drawstyle="steps-mid", **style)
        for prev, r, lam in zip(rows, rows[1:], lams[1:], strict=False):
            if r.get("trained_in_trial") != prev.get("trained_in_trial") and r.get("trained_in_trial"):
                ax_b.plot([r["epoch"]], [r["beta"]], "x", color=style["color"], markersize=8,
                          label=exploit_label)
                ax_l.plot([r["epoch"]], [lam], "x", color=style["color"], markersize=8)
                exploit_label = None
    bounds = best.get("beta_bounds_exact")
    if bounds and _number(best.get("c")) and _number(bounds[1]) and math.isfinite(bounds[1]):
        lam_hi = best["c"] * (bounds[1] + 1.0)  # the same for every c: beta's bound is lam_hi / c - 1
        ax_l.axhline(lam_hi, color="tab:red", linestyle="--", linewidth=1, label=f"bound {lam_hi:.3g}")
        ax_l.axhline(1.0, color="tab:blue", linestyle=":", linewidth=1, label="resampling (lambda = 1)")
        cs = sorted({r["c"] for rows in by_trial.values() for r in rows if _number(r.get("c"))})
        for c in cs if len(cs) <= 4 else []:
            hi = lam_hi / c - 1.0
            ax_b.axhline(hi, color="tab:red", linestyle="--", linewidth=1,
                         label=f"bound for c = {c:.3g}: {hi:.3g}")
    ax_b.set_xlabel("epoch")
    ax_b.set_ylabel("beta")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("lambda = c (beta + 1)")
    for ax in (ax_b, ax_l):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{best['name']}: beta and lambda per epoch of {len(by_trial)} trials (best in red)")
    return fig


def render_markdown(trials: list[dict], best: dict, plots: list[str]) -> str:
    """report.md: the best configuration, the seed statistics and the table of trials."""
    metric = best["selection_metric"]
    s = best["search"]
    cfg = best["best_config"]
    lines = [
        f"# {best['name']}: search report",
        "",
        f"{s['trials']} trials ({s['completed']} completed, {s['stopped']} stopped early, {s['diverged']} "
        f"diverged, {s['error']} failed), {s['epochs_spent']} epochs in all; {selection_text(best)} "
        f"({s['bounds']} bounds, margin {s['margin']}, scheduler {s['scheduler']}).",
        "",
        "## Best configuration",
        "",
        "| " + " | ".join(cfg) + " |",
        "|" + "---|" * len(cfg),
        "| " + " | ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in cfg.values()) + " |",
        "",
        f"Method {best.get('method', '')}, trial {best['trial_id']}, epoch {best['best_epoch']} of "
        f"{best['epochs_run']}" + _bounds_text(best) + ".",
        "",
        "| split | GBA | WGA | avg | worst class | minority |",
        "|---|---|---|---|---|---|",
    ]
    for split in ("val", "test"):
        lines.append(f"| {split} | " + " | ".join(
            _pct(best[f"{split}_{m}"]) for m in ("gba", "wga", "avg", "worst_class", "minority")) + " |")
    final = best.get("final_seeds")
    if final:
        lines += ["", f"## The best configuration over {len(final['seeds'])} new seeds {final['seeds']}", "",
                  "mean +- std (ddof 0) of the epoch each run selects by " + metric + ":", "",
                  "| split | GBA | WGA | avg | worst class | minority |", "|---|---|---|---|---|---|"]
        for split in ("val", "test"):
            cells = []
            for m in ("gba", "wga", "avg", "worst_class", "minority"):
                mean, std = final["mean"][f"{split}_{m}"], final["std"][f"{split}_{m}"]
                cells.append("" if mean is None else f"{100 * mean:.2f} +- {100 * std:.2f}")
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
    keys = [k for k in cfg if k != "seed"]
    shown = objective_metrics(best)
    on_front = {e["trial_id"] for e in best.get("pareto_front") or []}
    if best.get("pareto_front"):
        lines += _front_markdown(best, keys, shown)
    lines += ["", "## Trials (best first)", "",
              "| trial | status | " + " | ".join(keys)
              + f" | epochs | best epoch | {' | '.join(shown)} | test GBA | test WGA |",
              "|---|---|" + "---|" * len(keys) + "---|---|" + "---|" * len(shown) + "---|---|"]
    ranked = sorted(trials, key=lambda t: -(t[metric] if t[metric] is not None else -1.0))
    for t in ranked:
        values = " | ".join(f"{t.get(k):.4g}" if isinstance(t.get(k), int | float) else str(t.get(k, ""))
                            for k in keys)
        status = t["status"] + (", Pareto front" if t["trial_id"] in on_front else "")
        lines.append(
            f"| {t['trial_id']} | {status} | {values} | {t['epochs_run']} | "
            f"{t['best_epoch'] if t['best_epoch'] else ''} | {' | '.join(_pct(t.get(m)) for m in shown)} | "
            f"{_pct(t['test_gba'])} | {_pct(t['test_wga'])} |"
        )
    reasons = [t for t in trials if t["status"] in ("diverged", "error")]
    if reasons:
        lines += ["", "Diverged or failed:", ""] + [f"- {t['trial_id']}: {t['reason']}" for t in reasons]
    lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots] + [""]
    return "\n".join(lines)


def _front_markdown(best: dict, keys: list[str], shown: list[str]) -> list[str]:
    """report.md's Pareto front section: how the best trial was picked, and the front's trials."""
    sel = best["selection"]
    lines = ["", f"## Pareto front ({trials_text(len(best['pareto_front']))})", "",
             f"No other trial is at least as good on every one of {', '.join(shown)} and better on one. "
             f"The best trial is the front's largest {sel['maximize']}{floors_text(sel['subject_to'])}: "
             f"{sel['trial_id']}." + (f" Not met: {sel['note']}." if sel.get("note") else ""), "",
             "| trial | " + " | ".join(keys) + f" | best epoch | {' | '.join(shown)} | test GBA | test WGA |",
             "|---|" + "---|" * len(keys) + "---|" + "---|" * len(shown) + "---|---|"]
    for e in best["pareto_front"]:
        values = " | ".join(f"{e['config'].get(k):.4g}" if isinstance(e["config"].get(k), int | float)
                            else str(e["config"].get(k, "")) for k in keys)
        mark = " (selected)" if e["trial_id"] == best["trial_id"] else ""
        lines.append(f"| {e['trial_id']}{mark} | {values} | {e['best_epoch']} | "
                     f"{' | '.join(_pct(e[m]) for m in shown)} | {_pct(e['test_gba'])} | "
                     f"{_pct(e['test_wga'])} |")
    return lines


def _bounds_text(best: dict) -> str:
    bounds = best.get("beta_bounds_exact")
    if not bounds or bounds[0] is None or bounds[1] is None:
        return ""
    return f"; beta's exact bounds for c = {best['c']:.4g}: [{bounds[0]:.4g}, {bounds[1]:.4g}]"


def write_report(run_dir: str | Path) -> Path:
    """Render report.md, plots/*.png and report.html from a run folder's tables; return report.md's path."""
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    with gc_paused():
        return _write_report(run_dir, *load_run(run_dir))


def _write_report(run_dir: Path, trials: list[dict], histories: list[dict], best: dict) -> Path:
    from gerne_ray import report_html

    figures = {}  # report.md's order: each figure saved as plots/<name> and drawn inline in report.html
    key = swept_key(best)
    if key is not None:
        figures[f"metric_vs_{key}.png"] = figure_metric_vs_param(trials, best, key)
    figures["best_groups.png"] = figure_group_heatmap(best)
    if best.get("pareto_front"):
        figures[PARETO_PLOT] = figure_pareto(trials, best)
    if schedule_moves(histories):
        figures[SCHEDULE_PLOT] = figure_beta_schedule(histories, best)
    figures["learning_curves.png"] = figure_learning_curves(histories, best)
    svgs = {}
    titles = {**report_html.cell_titles(best), **front_titles(best)}
    for name, fig in figures.items():
        svgs[name] = report_html.svg_of(fig, name, titles)
        save_png(fig, run_dir / "plots" / name)
    path = run_dir / "report.md"
    text = render_markdown(trials, best, list(figures))
    results.atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    report_html.write_html(run_dir / report_html.REPORT_HTML, report_html.render_report(trials, best, svgs))
    return path
