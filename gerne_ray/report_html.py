"""report.html and compare.html: a search's report, or a comparison's, as one self-contained HTML file.

Everything is inline: gerne_ray.report's figures as SVG (text drawn as paths, so no font is fetched),
one style sheet, no script, no external link needed to render. The file opens offline, from a run
folder or from object storage, and makes no request. Every text taken from specs and data (run,
dataset and method names, configurations, failure reasons) is escaped.

A search's report, top to bottom (`SEARCH_SECTIONS`): the summary (dataset, training group table,
beta's bounds, budget, trial statuses); the best configuration with its validation and test metrics
and the final seeds' mean +- std; per-group accuracy as class x attribute heatmaps (each cell's
tooltip: accuracy, group size, training share alpha); the selection metric against the searched value
with ERM, resampling and beta's bounds; for a multi-metric search the Pareto front (the plane of the
first two metrics, each front trial's tooltip its configuration and metrics) with the front's table;
learning curves; the trials table. A comparison's page puts the methods side by side: test metrics,
the comparison plot, each method's test heatmap.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

from gerne_ray import results
from gerne_ray.report import (
    PARETO_PLOT,
    SCHEDULE_PLOT,
    _pct,
    cell_id,
    floors_text,
    group_cells,
    objective_metrics,
    pseudo_groups,
    selection_text,
    swept_key,
    trials_text,
)

REPORT_HTML = "report.html"
COMPARE_HTML = "compare.html"  # beside compare.md: a comparison may share its folder with a search
# A search's sections, in order. "pareto" holds a multi-metric search's Pareto front (empty with one metric).
SEARCH_SECTIONS = ("summary", "best", "groups", "search", "pareto", "schedule", "curves", "trials")
SHOWN = ("gba", "wga", "avg", "worst_class", "minority")
NAMES = {"gba": "GBA", "wga": "WGA", "avg": "avg", "worst_class": "worst class", "minority": "minority"}
GLOSSARY = ("GBA: the unweighted mean of per-group accuracies. WGA: the worst group's accuracy. avg: correct "
            "over all samples. worst class: the lowest per-class accuracy. minority: accuracy over the "
            "bias-conflicting samples (every group that is not its class's largest training group).")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d1d1f;
       margin: 0 auto; padding: 1rem 1.5rem 3rem; max-width: 1240px; line-height: 1.4; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; } h3 { font-size: 1rem; }
.lead { color: #555; margin-top: 0; } .note { color: #555; font-size: 0.85rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.85rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f4f4f6; } td.text, th.text { text-align: left; }
.scroll { overflow-x: auto; max-width: 100%; }
.grid td, .grid th { padding: 0.1rem 0.3rem; font-size: 0.75rem; }
.grid td small { color: #666; display: block; font-size: 0.65rem; }
.badge { display: inline-block; border-radius: 0.6rem; padding: 0 0.6rem; margin-right: 0.3rem;
         background: #eef; font-size: 0.85rem; }
.badge.diverged, .badge.error { background: #fde2e2; } .badge.completed { background: #e2f5e6; }
tr.best td { background: #fff7d6; } tr.diverged td, tr.error td { color: #a33; }
figure { margin: 0.8rem 0; } figcaption { color: #555; font-size: 0.85rem; }
figure svg { max-width: 100%; height: auto; display: block; }
figure svg g[id^="text_"] { pointer-events: none; }  /* a cell's label leaves the cell's tooltip */
.side { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.side figure { flex: 1 1 560px; max-width: 100%; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.15rem 1rem; font-size: 0.9rem; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    return f"{value:.{digits}g}"


def svg_of(fig, name: str, titles: dict[str, str] | None = None) -> str:
    """The figure as an inline <svg> element whose ids all start with `<name>-` (one page holds several
    figures; the same figure gives the same text); an element whose gid is a key of titles gets that
    text as its tooltip. The figure's layout is computed in this draw and then kept: a PNG saved after
    it draws without laying out every text again."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name, "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    if fig.get_layout_engine() is not None:
        fig.set_layout_engine("none")  # keeps the axes where the constrained layout put them
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE: inline SVG needs neither
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)  # matplotlib's comments: each text's string again
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)  # RDF naming matplotlib.org
    for gid, text in (titles or {}).items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{_e(text)}</title>', 1)
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", name)
    return re.sub(r'(\bid="|href="#|url\(#)', lambda m: f"{m.group(1)}{prefix}-", svg)


def cell_titles(best: dict, splits: tuple[str, ...] = ("val", "test")) -> dict[str, str]:
    """Each heatmap cell's tooltip: the group, its accuracy and size on the split, its training share."""
    out = {}
    for split in splits:
        for line in group_cells(best, split):
            for c in line:
                text = f"{split}, class y = {c.y}, attribute a = {c.a}: "
                text += (f"absent from the {split} split" if c.accuracy is None else
                         f"accuracy {100 * c.accuracy:.2f}% ({c.correct} of n = {c.n})")
                if c.train_count is not None:
                    text += f"; training: {c.train_count} samples, alpha = {c.alpha:.4g} of class {c.y}"
                if c.worst:
                    text += f"; the worst {split} group"
                out[cell_id(split, c.y, c.a)] = text
    return out


def _table(head: list[str], rows: list[list[str]], text_cols: int = 1, row_class: list[str] | None = None,
           css: str = "") -> str:
    """An HTML table from already escaped cells; the first text_cols columns left-aligned."""
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f'<{tag}{" class=text" if i < text_cols else ""}>{v}</{tag}>'
                       for i, v in enumerate(values))

    classes = row_class or [""] * len(rows)
    body = "".join(f'<tr class="{_e(c)}">{cells("td", r)}</tr>' for c, r in zip(classes, rows, strict=True))
    return (f'<div class="scroll"><table class="{css}"><thead><tr>{cells("th", head)}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _figure(svg: str | None, caption: str) -> str:
    if not svg:
        return ""
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _page(title: str, lead: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{_e(title)}</h1><p class=\"lead\">{lead}</p>\n" + "\n".join(s for s in sections if s)
            + "\n<p class=\"note\">Written by gerne-ray; one self-contained file (figures inline).</p>"
            "\n</body></html>\n")


# -- a search's report ---------------------------------------------------------------------------------

def _summary(trials: list[dict], best: dict) -> str:
    cfg = best.get("config") or {}
    data, optim, search = cfg.get("data") or {}, cfg.get("optim") or {}, cfg.get("search") or {}
    s = best["search"]
    facts = [("dataset", ", ".join(f"{k} {v}" if k != "dataset" else str(v) for k, v in data.items()
                                   if k in ("dataset", "conflict_ratio", "attributes", "attribute_labels")
                                   and v is not None)),
             ("model", ", ".join(f"{k} {v}" for k, v in (cfg.get("model") or {}).items()
                                 if k in ("arch", "hidden", "pretrained") and v is not None)),
             ("method", f"{best.get('method', '')}, {selection_text(best)}"),
             ("budget", f"{search.get('num_samples', s['trials'])} trials of up to "
                        f"{optim.get('epochs', '?')} epochs, at most {search.get('max_concurrent', '?')} at "
                        f"once, scheduler {s['scheduler']}; {s['epochs_spent']} epochs spent; "
                        f"{search.get('final_seeds') or 0} final seeds"),
             ("searched", _searched(best, search.get("space") or {}))]
    out = ["<h2 id=\"summary\">Summary</h2>", "<dl class=\"facts\">"]
    out += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts]
    out.append("<dt>trials</dt><dd>" + "".join(f'<span class="badge {st}">{st} {_e(s[st])}</span>'
                                               for st in ("completed", "stopped", "diverged", "error"))
               + f" of {_e(s['trials'])}</dd></dl>")
    out.append(_bounds(trials, best))
    out.append(_group_table(best))
    return "\n".join(out)


def _searched(best: dict, space: dict) -> str:
    """What the search varied, with the spec's range where it gives one."""
    keys = [k for k in best.get("searched", []) if k != "lambda"]
    s = best["search"]
    own = (space.get("methods") or {}).get(best.get("method"), {})  # search.space.methods.<method>
    parts = []
    for k in keys:
        if k == "beta":
            parts.append(f"beta inside its bounds ({s['bounds']}, margin {s['margin']})")
        elif space.get(k) is not None:
            parts.append(f"{k} in {space[k]}")
        elif own.get(k) is not None:
            parts.append(f"{k} in {list(own[k])}")
        else:
            parts.append(f"{k} over the method's default range")
    return "; ".join(parts) or "nothing (one configuration)"


def _bounds(trials: list[dict], best: dict) -> str:
    """beta's exact bounds for every c the trials used (GERNE), or nothing."""
    rows = {}
    for t in trials:
        b = t.get("beta_bounds_exact")
        if isinstance(t.get("c"), int | float) and b is not None and len(b) == 2 and None not in b:
            rows.setdefault(round(float(t["c"]), 6), (float(b[0]), float(b[1])))
    if not rows:
        return ""
    if pseudo_groups(best) or len(rows) > 8:  # the bounds depend on each trial's t too
        lo, hi = best["beta_bounds_exact"]
        return (f"<p>beta's exact bounds depend on each trial's c and t (see the trials table); the best "
                f"trial's: [{_e(_num(lo))}, {_e(_num(hi))}].</p>")
    body = [[_e(_num(c)), _e(_num(lo)), _e(_num(hi)), f"[0, {_e(_num(c * (hi + 1)))}]", _e(_num(1 / c - 1))]
            for c, (lo, hi) in sorted(rows.items())]
    return ("<h3>beta's exact bounds</h3>"
            + _table(["c", "beta from", "beta to", "lambda = c (beta + 1) to", "beta of resampling"], body)
            + "<p class=\"note\">Past the upper bound the largest majority group gets a negative weight; "
              "ERM is beta = -1, resampling lambda = 1.</p>")


def _group_table(best: dict) -> str:
    """The training split's group counts and alpha as a class x attribute table."""
    train = best.get("train_groups") or []
    if not train:
        return ""
    num_y, num_a = max(g["y"] for g in train) + 1, max(g["a"] for g in train) + 1
    by = {(g["y"], g["a"]): g for g in train}
    cols = [a for a in range(num_a) if any(by.get((y, a), {}).get("count") for y in range(num_y))]
    largest = {y: max(cols, key=lambda a: by.get((y, a), {}).get("count") or 0) for y in range(num_y)}
    rows = []
    for y in range(num_y):
        line = [f"y = {y}"]
        for a in cols:
            g = by.get((y, a)) or {"count": 0, "alpha": 0.0}
            cell = f'{_e(g["count"])}<small>&alpha; {_e(_num(g["alpha"], 2))}</small>'
            line.append(f"<b>{cell}</b>" if a == largest[y] else cell)
        rows.append(line)
    head = ["class"] + [f"a = {a}" for a in cols]
    if pseudo_groups(best):
        title = (f"<h3>Training pseudo-groups (unknown attributes, t = {_e(_num(best.get('t')))}): "
                 "per class, a = 1 holds the least confident samples</h3>")
    else:
        title = "<h3>Training groups: samples and alpha (the share of class y with attribute a)</h3>"
    table = _table(head, rows, css="grid")
    return title + table + "<p class=\"note\">In bold: each class's largest group (its bias-aligned one).</p>"


def _metrics_rows(values: dict, fmt) -> list[list[str]]:
    return [[split] + [_e(fmt(values, f"{split}_{m}")) for m in SHOWN] for split in ("val", "test")]


def _best(best: dict) -> str:
    cfg = best["best_config"]
    out = ["<h2 id=\"best\">Best configuration</h2>",
           _table(list(map(_e, cfg)), [[_e(_num(v, 6)) for v in cfg.values()]], text_cols=0),
           f"<p>Method {_e(best.get('method', ''))}, trial {_e(best['trial_id'])}, epoch "
           f"{_e(best['best_epoch'])} of {_e(best['epochs_run'])} selected by "
           f"{_e(best['selection_metric'])}.</p>",
           _table(["split"] + [NAMES[m] for m in SHOWN], _metrics_rows(best, lambda v, k: _pct(v.get(k))))]
    final = best.get("final_seeds")
    if final:
        def cell(values, key):
            mean, std = values["mean"].get(key), values["std"].get(key)
            return "" if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f}"

        out += [f"<h3>The best configuration over {len(final['seeds'])} new seeds {_e(final['seeds'])}</h3>",
                f"<p class=\"note\">mean ± std (ddof 0), each run at the epoch it selects by "
                f"{_e(best['selection_metric'])}.</p>",
                _table(["split"] + [NAMES[m] for m in SHOWN], _metrics_rows(final, cell))]
    out.append(f"<p class=\"note\">{_e(GLOSSARY)}</p>")
    return "\n".join(out)


def _pareto(best: dict, svg: str | None) -> str:
    """A multi-metric search's Pareto front: the plane of its first two metrics and the front's trials."""
    front = best.get("pareto_front")
    if not front:
        return ""
    metrics = objective_metrics(best)
    sel = best["selection"]
    keys = [k for k in best["best_config"] if k != "seed"]
    rows = [[_e(e["trial_id"]), *[_e(_num(e["config"].get(k))) for k in keys], _e(e["best_epoch"]),
             *[_pct(e.get(m)) for m in metrics], _pct(e.get("test_gba")), _pct(e.get("test_wga"))]
            for e in front]
    classes = ["best" if e["trial_id"] == best["trial_id"] else "" for e in front]
    floors = _e(floors_text(sel["subject_to"]))
    plane = f"{_e(metrics[0])} against {_e(metrics[1])}" + (
        f" (the front is over all {len(metrics)} metrics: a front trial may look dominated in this plane)"
        if len(metrics) > 2 else "")
    out = [f'<h2 id="pareto">Pareto front ({trials_text(len(front))})</h2>',
           _figure(svg, f"Every trial at its selected epoch (the best by {_e(metrics[0])}): {plane}. The "
                        "front (no other trial at least as good on every metric and better on one) in orange "
                        "and joined, the selected trial ringed in red" + (", floors dashed" if floors else "")
                        + "; hover a front trial for its configuration."),
           f"<p>The best trial is the front's largest {_e(sel['maximize'])}{floors}: "
           f"{_e(sel['trial_id'])}.</p>"]
    if sel.get("note"):
        out.append(f"<p class=\"note\">Not met: {_e(sel['note'])}.</p>")
    out.append(_table(["trial", *map(_e, keys), "best epoch", *map(_e, metrics), "test GBA", "test WGA"],
                      rows, row_class=classes))
    return "\n".join(out)


def _trials(trials: list[dict], best: dict) -> str:
    metric = best["selection_metric"]
    shown = objective_metrics(best)
    on_front = {e["trial_id"] for e in best.get("pareto_front") or []}
    keys = [k for k in best["best_config"] if k != "seed"]
    bounds = any(t.get("beta_bounds_exact") is not None for t in trials)
    head = ["trial", "status", *keys] + (["beta's bounds"] if bounds else []) + [
        "epochs", "best epoch", *shown, "test GBA", "test WGA"]
    ranked = sorted(trials, key=lambda t: -(t[metric] if t.get(metric) is not None else -1.0))
    rows, classes = [], []
    for t in ranked:
        b = t.get("beta_bounds_exact")
        status = t["status"] + (", Pareto front" if t["trial_id"] in on_front else "")
        row = [_e(t["trial_id"]), _e(status), *[_e(_num(t.get(k))) for k in keys]]
        if bounds:
            row.append("" if b is None or len(b) != 2 else f"[{_e(_num(b[0], 3))}, {_e(_num(b[1], 3))}]")
        row += [_e(t.get("epochs_run", "")), _e(t.get("best_epoch") or ""), *[_pct(t.get(m)) for m in shown],
                _pct(t.get("test_gba")), _pct(t.get("test_wga"))]
        rows.append(row)
        classes.append("best" if t["trial_id"] == best["trial_id"] else t["status"])
    out = [f"<h2 id=\"trials\">Trials ({len(trials)}, best first)</h2>", _table(head, rows, 2, classes)]
    failed = [t for t in trials if t["status"] in ("diverged", "error")]
    if failed:
        out.append("<p>Diverged or failed:</p><ul>" + "".join(
            f"<li>{_e(t['trial_id'])}: {_e(t.get('reason', ''))}</li>" for t in failed) + "</ul>")
    return "\n".join(out)


def render_report(trials: list[dict], best: dict, svgs: dict[str, str]) -> str:
    """report.html's text: the sections of SEARCH_SECTIONS with the figures (keyed by PNG name) inline."""
    key = swept_key(best)
    parts = {
        "summary": _summary(trials, best),
        "best": _best(best),
        "groups": "<h2 id=\"groups\">Per-group accuracy of the best trial</h2>" + _figure(
            svgs.get("best_groups.png"),
            "Rows are classes y, columns attributes a. Hover a cell for its accuracy, its size n in the "
            "split and its training share alpha; the worst group (the WGA) is outlined in red."),
        "search": "" if f"metric_vs_{key}.png" not in svgs else "<h2 id=\"search\">The search</h2>" + _figure(
            svgs[f"metric_vs_{key}.png"],
            f"Each trial's {_e(best['selection_metric'])} at its selected epoch against {_e(key)}, marked by "
            "status" + ("; ERM (beta = -1), resampling (lambda = c (beta + 1) = 1) and beta's upper bound "
                        "drawn." if key == "beta" else ".")),
        "pareto": _pareto(best, svgs.get(PARETO_PLOT)),
        # where beta or c moved during training (a beta_schedule, PBT): each trial's per epoch
        "schedule": "" if SCHEDULE_PLOT not in svgs else "<h2 id=\"schedule\">beta per epoch</h2>" + _figure(
            svgs[SCHEDULE_PLOT], "Each search trial's beta and lambda = c (beta + 1) per epoch, as its "
            "history records them (the best trial in red), with beta's upper bound for each c and lambda's "
            "(the same for every c); a cross marks where a trial continued from another trial's checkpoint "
            "(PBT), the epochs before it trained by that trial."),
        "curves": "<h2 id=\"curves\">Learning curves</h2>" + _figure(
            svgs.get("learning_curves.png"), "Every search trial's validation metric and training loss per "
                                             "epoch; the best trial in red."),
        "trials": _trials(trials, best),
    }
    cfg = best.get("config") or {}
    dataset = (cfg.get("data") or {}).get("dataset", "")
    values = ", ".join(f"{_e(m)} {_pct(best.get(m))}" for m in objective_metrics(best))
    lead = (f"{_e(best.get('method', ''))} on {_e(dataset)}: {best['search']['trials']} trials, "
            f"{_e(selection_text(best))}; best {values}, test GBA {_pct(best.get('test_gba'))}, "
            f"test WGA {_pct(best.get('test_wga'))}.")
    return _page(f"{best['name']}: search report", lead, [parts[s] for s in SEARCH_SECTIONS if s in parts])


# -- a comparison --------------------------------------------------------------------------------------

def render_compare(spec, rows: list[dict], wall_s: float, bests: dict[str, dict], compare_svg: str) -> str:
    """compare.html's text: every method's test metrics side by side, the comparison plot, each method's
    selected configuration and test heatmap (with a link to its own report.html)."""
    import matplotlib.pyplot as plt

    from gerne_ray.compare import by_method, stats
    from gerne_ray.report import figure_group_heatmap

    group_svgs = {}
    for method, best in bests.items():
        fig = figure_group_heatmap(best, ("test",))
        group_svgs[method] = svg_of(fig, f"groups-{method}", cell_titles(best, ("test",)))
        plt.close(fig)

    metrics = spec.search.metrics
    groups = by_method(rows)
    seeds = sorted({r["seed"] for r in rows})
    head = ["method"] + [f"test {NAMES[m]}" for m in SHOWN] + metrics
    body = []
    for method, rs in groups.items():
        s = stats(rs)
        cells = [s[f"test_{m}"] for m in SHOWN] + [s[m] for m in metrics]
        body.append([_e(method)] + ["" if v is None else f"{100 * v[0]:.2f} ± {100 * v[1]:.2f}"
                                    for v in cells])
    configs = [[_e(m), _e(rs[0]["selected_trial"]), f"<code>{_e(rs[0]['config'])}</code>"]
               for m, rs in groups.items()]
    side = "".join(
        _figure(group_svgs.get(m), f"<a href=\"{_e(m)}/{REPORT_HTML}\">{_e(m)}</a>: test per-group accuracy "
                                   f"of its best trial (its search report)")
        for m in groups)
    sections = [
        "<h2>Test metrics, mean ± std over the seeds</h2>",
        _table(head, body),
        f"<p class=\"note\">{_e(GLOSSARY)}</p>",
        _figure(compare_svg, "Test GBA and WGA per method: mean with std error bars, every seed a dot."),
        "<h2>Selected configurations</h2>",
        _table(["method", "trial", "configuration"], configs, text_cols=3),
        "<h2>Per-group test accuracy, side by side</h2>",
        f"<div class=\"side\">{side}</div>",
    ]
    lead = (f"Each method searched with {spec.search.num_samples} trials (one where it has nothing to "
            f"search), {spec.optim.epochs} epochs, scheduler {_e(spec.search.scheduler)}, selection by "
            f"{_e(' and '.join(metrics))}; the best configuration trained again with seeds {_e(seeds)}. "
            f"Wall time {wall_s:.0f} s.")
    return _page(f"{spec.name}: methods compared on {spec.data.dataset}", lead, sections)


def write_html(path: Path, text: str) -> None:
    """Write an HTML page atomically."""
    results.atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


__all__ = ["render_report", "render_compare", "svg_of", "cell_titles", "write_html", "REPORT_HTML",
           "COMPARE_HTML"]
