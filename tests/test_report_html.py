"""report.html and compare.html: self-contained pages that render in a real browser.

One real small search (colored_digits, 10 x 10 groups) and one real comparison (synthetic, 2 x 2
groups) on the shared local Ray cluster write the pages; headless Chromium, driven over the Chrome
DevTools Protocol, opens each from its file and records what it does: console messages, exceptions,
every network request, the images, and a full-page screenshot. Without Chromium (or the
websocket-client package) the browser tests are skipped, saying why.
"""

import base64
import gc
import io
import json
import queue
import re
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gerne_ray import cli, report, report_html
from gerne_ray.compare import compare
from gerne_ray.spec import load_spec
from gerne_ray.tuning import tune

SEARCH = {
    "name": "html",
    "data": {"dataset": "colored_digits", "conflict_ratio": 0.02},
    "model": {"arch": "mlp", "hidden": 32},
    "method": {"name": "gerne", "c": 0.5},
    "optim": {"epochs": 2, "batch_size_per_class": 8, "lr": 0.1, "steps_per_epoch": 3},
    "search": {"num_samples": 2, "scheduler": "fifo", "max_concurrent": 2, "final_seeds": 1,
               "space": {"c": [0.5, 1.0]}},
}
COMPARE = {
    "name": "cmp-html",
    "data": {"dataset": "synthetic", "conflict_ratio": 0.05},
    "method": {"name": "gerne", "c": 1.0, "beta": 0.5},
    "optim": {"lr": 0.05, "epochs": 2, "batch_size_per_class": 8, "steps_per_epoch": 3},
    "search": {"num_samples": 2, "scheduler": "fifo", "max_concurrent": 2, "space": {"c": [1.0]}},
}
PARETO = {  # two metrics: the report's Pareto front section
    **COMPARE, "name": "pareto-html",
    "search": {"metric": ["val_gba", "val_wga"], "num_samples": 3, "max_concurrent": 2,
               "select": {"maximize": "val_gba", "subject_to": {"val_wga": 0.2}}, "space": {"c": [0.5, 1.0]}},
}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 90  # Chromium's start and a page load, generous for a loaded 2-core machine


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory):
    """A real search (10 x 10 groups) and a real comparison of erm and gerne (2 x 2 groups)."""
    storage = tmp_path_factory.mktemp("runs")
    search = tune(load_spec({**SEARCH, "storage": {"path": str(storage)}}))
    compared = compare(load_spec({**COMPARE, "storage": {"path": str(storage)}}), "erm,gerne")
    return {"search": search.run_dir, "compare": compared.run_dir}


@pytest.fixture(scope="module")
def pareto_run(ray_cluster, tmp_path_factory):
    """A real two-metric search (val_gba and val_wga, 2 x 2 groups)."""
    storage = tmp_path_factory.mktemp("pareto")
    return tune(load_spec({**PARETO, "storage": {"path": str(storage)}})).run_dir


# ---- the pages' content, without a browser ---------------------------------------------------------


def test_report_html_is_written_beside_report_md_and_rendered_again_the_same(runs):
    run = runs["search"]
    page = (run / "report.html").read_text()
    assert (run / "report.md").is_file() and page.startswith("<!DOCTYPE html>")
    best = json.loads((run / "best.json").read_text())
    # self-contained: no script, no stylesheet or image fetched, no URL but the SVG namespaces
    assert "<script" not in page and "<link" not in page and "<img" not in page
    urls = set(re.findall(r"""(?:https?:)?//[^\s"'<>)]+""", page))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    # the sections, in order, and the figures inline
    heads = re.findall(r'<h2 id="(\w+)"', page)
    assert heads == ["summary", "best", "groups", "search", "curves", "trials"]
    assert page.count("<svg") == 3
    assert "colored_digits" in page and best["trial_id"] in page
    for status in ("completed", "stopped", "diverged", "error"):  # the status counts
        assert f"{status} {best['search'][status]}</span>" in page
    # each cell of the val and test heatmaps has a tooltip with its size and training share
    titles = re.findall(r'<g id="[\w-]*cell-(val|test)-(\d+)-(\d+)"><title>([^<]*)</title>', page)
    assert len(titles) == 2 * 10 * 10
    train = {(g["y"], g["a"]): g for g in best["train_groups"]}
    for split, y, a, text in titles:
        group = next(g for g in best[f"{split}_groups"] if (g["y"], g["a"]) == (int(y), int(a)))
        assert f"of n = {group['n']}" in text and f"alpha = {train[int(y), int(a)]['alpha']:.4g}" in text
        assert ("worst" in text) == (group["accuracy"] == best[f"{split}_wga"])
    # `gerne-ray report` renders the same page again from the files alone
    (run / "report.html").unlink()
    assert cli.main(["report", str(run)]) == 0
    assert (run / "report.html").read_text() == page


def test_the_summary_names_the_ranges_the_search_drew_from():
    best = {"method": "groupdro", "searched": ["eta", "lr"], "search": {"bounds": "exact", "margin": 0.01}}
    space = {"lr": [0.01, 0.1], "methods": {"groupdro": {"eta": [0.001, 0.02]}, "jtt": {"lambda_up": [3, 4]}}}
    assert report_html._searched(best, space) == "eta in [0.001, 0.02]; lr in [0.01, 0.1]"
    assert report_html._searched({**best, "searched": ["eta"]}, {}) == "eta over the method's default range"


def test_text_from_specs_and_data_is_escaped(runs):
    import pyarrow.parquet as pq

    run = runs["search"]
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    best = json.loads((run / "best.json").read_text())
    hostile = '<script>alert("x")</script>'
    best["name"] = hostile
    best["config"]["data"]["dataset"] = hostile
    trials[0]["status"], trials[0]["reason"] = "error", '<img src=x onerror="alert(1)">'
    page = report_html.render_report(trials, best, {})
    assert "<script" not in page and "<img" not in page
    assert html_escaped(hostile) in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_the_heatmap_draws_every_group_and_outlines_the_worst(runs):
    """The figure behind best_groups.png and the page: K x A cells per split, the WGA groups in red."""
    import matplotlib.pyplot as plt

    best = json.loads((runs["search"] / "best.json").read_text())
    fig = report.figure_group_heatmap(best)
    try:
        for ax, split in zip(fig.axes, ("val", "test"), strict=False):
            cells = [p for p in ax.patches if (p.get_gid() or "").startswith(f"cell-{split}-")]
            outlined = [p for p in ax.patches if p.get_gid() is None and p.get_edgecolor()[:3] == (1, 0, 0)]
            worst = [g for g in best[f"{split}_groups"] if g["accuracy"] == best[f"{split}_wga"]]
            assert len(cells) == 100 and len(outlined) == len(worst) >= 1
            centres = {(round(p.get_x() + p.get_width() / 2), round(p.get_y() + p.get_height() / 2))
                       for p in outlined}
            assert centres == {(g["a"], g["y"]) for g in worst}
    finally:
        plt.close(fig)
    png = (runs["search"] / "plots" / "best_groups.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_png_has_the_figures_own_size_and_gc_resumes_after_the_report(runs, tmp_path):
    """Plots are laid out once (constrained layout, kept after the SVG's draw; no tight bounding box
    that crops the PNG to another size) and the report pauses the garbage collector only while it
    draws: it is back on after, also when drawing fails, and stays off where the caller had it off."""
    import matplotlib.pyplot as plt

    best = json.loads((runs["search"] / "best.json").read_text())
    fig = report.figure_group_heatmap(best)
    width, height = fig.get_size_inches()
    report_html.svg_of(fig, "groups")
    report.save_png(fig, tmp_path / "again.png")
    png = (tmp_path / "again.png").read_bytes()
    assert png[12:16] == b"IHDR"  # the first chunk: width and height, big-endian
    assert struct.unpack(">II", png[16:24]) == (round(width * 110), round(height * 110))
    assert not plt.get_fignums()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), report.gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("a figure failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with report.gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_metric_vs_beta_draws_erm_resampling_and_the_bounds(runs):
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    run = runs["search"]
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    best = json.loads((run / "best.json").read_text())
    fig = report.figure_metric_vs_param(trials, best, "beta")
    try:
        texts = [t.get_text() for t in fig.axes[0].texts]
    finally:
        plt.close(fig)
    assert " ERM" in texts
    cs = {t["c"] for t in trials}
    assert {t for t in texts if "resampling" in t} == {f" resampling (c = {c:.3g})" for c in cs}
    uppers = {round(t["beta_bounds_exact"][1], 6) for t in trials}
    assert {t for t in texts if "bound" in t} == {f" bound {hi:.3g}" for hi in uppers}


def test_compare_html_puts_the_methods_side_by_side(runs):
    run = runs["compare"]
    page = (run / "compare.html").read_text()
    assert (run / "compare.md").is_file() and "<script" not in page
    for method in ("erm", "gerne"):
        assert (run / method / "report.html").is_file()
        assert f'<a href="{method}/report.html">{method}</a>' in page
        cells = re.findall(rf'<g id="groups-{method}-cell-test-(\d)-(\d)"><title>', page)
        assert sorted(cells) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert page.count("<svg") == 3  # the comparison plot and one heatmap per method
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(set(ids)) == len(ids), "an id twice in one page"
    refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', page))
    assert refs and refs <= set(ids), refs - set(ids)  # every reference (glyph, clip path, hatch) resolves


def test_a_two_metric_search_has_a_pareto_section(pareto_run, runs):
    page = (pareto_run / "report.html").read_text()
    best = json.loads((pareto_run / "best.json").read_text())
    front = best["pareto_front"]
    assert front and best["trial_id"] in {e["trial_id"] for e in front}
    heads = re.findall(r'<h2 id="(\w+)"', page)
    assert "pareto" in heads and heads.index("search") < heads.index("pareto") < heads.index("curves")
    start = page.index('<h2 id="pareto"')
    section = page[start:page.index("<h2 ", start + 1)]
    assert f"Pareto front ({len(front)} trial{'s' * (len(front) > 1)})" in section
    assert "val_wga &gt;= 20%" in section
    assert section.count("<svg") == 1
    assert page.count("<svg") == len(list((pareto_run / "plots").glob("*.png")))  # each figure inline
    # every front trial a marker with its tooltip, the selected one ringed, the front joined
    tips = dict(re.findall(r'<g id="pareto-png-front-(\w+)"><title>([^<]*)</title>', section))
    assert sorted(tips) == sorted(e["trial_id"] for e in front)
    for e in front:
        assert f"val_gba {100 * e['val_gba']:.2f}, val_wga {100 * e['val_wga']:.2f}" in tips[e["trial_id"]]
    assert "; selected" in tips[best["trial_id"]]
    assert 'id="pareto-png-selected"' in section and 'id="pareto-png-front-line"' in section
    # the front's table: one row per front trial, the selected one marked
    rows = re.findall(r'<tr class="(\w*)"><td class=text>(\w+)</td>', section)
    assert [r[1] for r in rows] == [e["trial_id"] for e in front]
    assert [r[1] for r in rows if r[0] == "best"] == [best["trial_id"]]
    # one metric: no Pareto section
    single = (runs["search"] / "report.html").read_text()
    assert 'id="pareto"' not in single and "Pareto" not in single


# ---- the pages in a browser ------------------------------------------------------------------------


class Browser:
    """Headless Chromium on a DevTools websocket: open a page, record what it does."""

    def __init__(self, exe: str, profile: Path):
        import websocket

        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
             "--disable-extensions", "--disable-sync", "--hide-scrollbars", "--mute-audio",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        self.log: list[str] = []

        def drain():  # Chromium logs to stderr all along: keep reading so it never blocks
            for line in self.proc.stderr:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + TIMEOUT_S
        url = None
        while url is None:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            url = found.group(1) if found else None
        if url is None:
            self.close()
            raise RuntimeError("no DevTools endpoint: " + "".join(self.log)[-1500:])
        self.ws = websocket.create_connection(url, timeout=TIMEOUT_S, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict:
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self.events.append(json.loads(self.ws.recv()))  # the socket's timeout bounds the wait

    def open(self, path: Path, width: int = 1280) -> dict:
        """Load a file; its console errors, exceptions, requests, images and a full-page screenshot."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session)
        self.send("Emulation.setDeviceMetricsOverride", session, width=width, height=900, deviceScaleFactor=1,
                  mobile=False)
        self.send("Page.navigate", session, url=path.as_uri())
        self.wait_for("Page.loadEventFired", session)
        page = self.send("Runtime.evaluate", session, returnByValue=True, expression="""(() => ({
            images: Array.from(document.images).map(i => ({src: i.src.slice(0, 80), width: i.naturalWidth})),
            svgs: Array.from(document.querySelectorAll('svg')).map(s => {
                const r = s.getBoundingClientRect(); return [r.width, r.height]; }),
            tooltips: document.querySelectorAll('svg title').length,
            height: document.documentElement.scrollHeight,
            text: document.body.innerText,
        }))()""")["result"]["value"]
        shot = self.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width, "height": page["height"], "scale": 1})
        mine = [e for e in self.events if e.get("sessionId") == session]
        self.send("Target.closeTarget", targetId=target)
        self.events = [e for e in self.events if e.get("sessionId") != session]
        params = [(e["method"], e.get("params", {})) for e in mine]
        page["errors"] = (
            [p["args"] for m, p in params
             if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert")]
            + [p["exceptionDetails"] for m, p in params if m == "Runtime.exceptionThrown"]
            + [p["entry"]["text"] for m, p in params
               if m == "Log.entryAdded" and p["entry"]["level"] == "error"])
        page["requests"] = [p["request"]["url"] for m, p in params if m == "Network.requestWillBeSent"]
        page["failed"] = [p.get("errorText") for m, p in params if m == "Network.loadingFailed"]
        page["screenshot"] = base64.b64decode(shot["data"])
        return page

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium, or a skip saying what is missing."""
    pytest.importorskip("websocket", reason="websocket-client is missing: pip install -e '.[dev]'")
    exe = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if exe is None:
        pytest.skip("no Chromium on PATH (looked for " + ", ".join(CHROMIUM_NAMES) + "); on Debian: "
                    "apt-get install chromium")
    try:
        chromium = Browser(exe, tmp_path_factory.mktemp("chromium-profile"))
    except (OSError, RuntimeError) as err:
        pytest.skip(f"{exe} does not start headless: {err}")
    yield chromium
    chromium.close()


def distinct_colours(png: bytes) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return len(image.getcolors(maxcolors=image.width * image.height))


def assert_renders_offline(page: dict, path: Path, svgs: int) -> None:
    """No console error, no request but the file itself, every image and figure drawn, content shown."""
    assert page["errors"] == [], page["errors"]
    assert page["requests"][0] == path.as_uri()  # requests are seen: the page's own file is the first
    assert all(u.startswith(("file:", "data:")) for u in page["requests"]), page["requests"]
    assert page["failed"] == []
    assert all(i["width"] > 0 for i in page["images"]), page["images"]
    assert len(page["svgs"]) == svgs and all(w > 100 and h > 100 for w, h in page["svgs"]), page["svgs"]
    assert distinct_colours(page["screenshot"]) > 200  # figures drawn: a blank page has one colour


def test_the_harness_sees_errors_requests_and_broken_images(browser, tmp_path):
    """The checks below can fail: a page with a script error, a remote image and a fetch is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>x</p><img src="http://127.0.0.1:9/missing.png">'
                   '<script>console.error("broken"); fetch("https://127.0.0.1:9/x").catch(() => {});</script>'
                   "</body></html>")
    page = browser.open(bad)
    assert any("broken" in json.dumps(e) for e in page["errors"])
    assert {"http://127.0.0.1:9/missing.png", "https://127.0.0.1:9/x"} <= set(page["requests"])
    assert [i["width"] for i in page["images"]] == [0]
    with pytest.raises(AssertionError):
        assert_renders_offline(page, bad, svgs=0)


def test_report_html_renders_offline_in_chromium(runs, browser):
    best = json.loads((runs["search"] / "best.json").read_text())
    path = runs["search"] / "report.html"
    page = browser.open(path)
    assert_renders_offline(page, path, svgs=3)
    assert page["tooltips"] == 2 * 10 * 10  # a tooltip per heatmap cell
    for text in ("Summary", "Best configuration", "Per-group accuracy", "Learning curves", "Trials",
                 best["trial_id"], "colored_digits"):
        assert text in page["text"], text
    assert page["height"] > 2000  # the whole report, not a stub


def test_compare_html_renders_offline_in_chromium(runs, browser):
    path = runs["compare"] / "compare.html"
    page = browser.open(path)
    assert_renders_offline(page, path, svgs=3)
    assert page["tooltips"] == 2 * 4
    assert "erm" in page["text"] and "gerne" in page["text"]
    path = runs["compare"] / "gerne" / "report.html"
    page = browser.open(path, width=800)  # 2 x 2 groups, a narrow window
    assert_renders_offline(page, path, svgs=3)
    assert page["tooltips"] == 2 * 4


def test_the_pareto_section_renders_offline_in_chromium(pareto_run, browser):
    best = json.loads((pareto_run / "best.json").read_text())
    path = pareto_run / "report.html"
    page = browser.open(path)
    assert_renders_offline(page, path, svgs=len(list((pareto_run / "plots").glob("*.png"))))
    assert page["tooltips"] == 2 * 2 * 2 + len(best["pareto_front"])  # heatmap cells and front trials
    n = len(best["pareto_front"])
    assert f"Pareto front ({n} trial{'s' * (n > 1)})" in page["text"]
    rule = f"The best trial is the front's largest val_gba, val_wga >= 20%: {best['trial_id']}"
    assert rule in page["text"]
