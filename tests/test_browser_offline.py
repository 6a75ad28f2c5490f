"""Nothing fetched from the internet: every page loads in headless Chromium with every request
outside the server's own address blocked, and none is attempted. On the way, no run chip in the
sidebar cuts its label (the seed was cut before).

``.streamlit/config.toml`` promises a local-only dashboard. Streamlit bundles its fonts (the
Material Symbols icon font included), but some inputs make the frontend point at the internet;
e.g. ``page_icon=":material/...:"`` in ``st.set_page_config`` makes the favicon an SVG on
fonts.gstatic.com. This test loads every page's URL afresh with a context that aborts (and
records) each request to any other host, and fails listing them. It also fails when a page's DOM
names an outside resource to load (icon, stylesheet, script, image, frame), in case the browser
skips a fetch in headless mode (favicons, preloads).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import streamlit_server

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
EXCEPTION = '[data-testid="stException"]'

# url path -> the page's st.title (app.py's st.Page entries; url paths from the file names)
PAGES = {
    "/": "CSBA Explorer",
    "/confusion": "Confusion matrices",
    "/f1": "Per-class precision, recall and F1",
    "/protocols": "Protocols",
    "/conflict": "Gradient conflict",
    "/attention": "Attention",
    "/attributions": "Attributions",
    "/training": "Training",
}

# Every URL the DOM asks the browser to load (links to follow, <a href>, are not loads).
DOM_RESOURCES = """() => {
    const urls = [];
    for (const el of document.querySelectorAll(
            'link[href], script[src], img[src], iframe[src], source[src], video[src], '
            + 'audio[src], embed[src], object[data], image[href]')) {
        for (const attr of ['href', 'src', 'data']) {
            const v = el.getAttribute(attr);
            if (v) urls.push(el.tagName.toLowerCase() + ' ' + new URL(v, document.baseURI).href);
        }
    }
    for (const sheet of document.styleSheets) {  // @font-face and url() in stylesheets
        let rules;
        try { rules = sheet.cssRules; } catch (e) { continue; }
        for (const rule of rules) {
            for (const m of rule.cssText.matchAll(/url\\(["']?([^"')]+)["']?\\)/g)) {
                urls.push('css ' + new URL(m[1], sheet.href || document.baseURI).href);
            }
        }
    }
    return urls;
}"""

# Every run chip of the sidebar's pickers: [label, its text's full width, the width shown] (px).
CHIPS = """() => Array.from(document.querySelectorAll(
    '[data-testid="stMultiSelectTagsContainer"] [data-tag] span[title]'))
    .map(s => [s.textContent, s.scrollWidth, s.clientWidth])"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")


@pytest.fixture
def server(tiny_runs, tiny_folder, tmp_path):
    """``streamlit run app.py`` on a free port against a private copy of the tiny runs
    (diagnosed, so the diagnostics pages draw their figures)."""
    from csba.diagnostics.run import diagnose_run

    root = tmp_path / "runs"
    shutil.copytree(tiny_runs["baseline"].parent.parent, root)
    for run_dir in sorted(root.glob("*/*-s0")):
        diagnose_run(str(run_dir), per_class=8, device="cpu")
    # a seed with a long label, chosen by default on Per-class F1 (all runs): its chip must show
    # the whole label ("class_heads s1234567 (32px)"), seed included
    src = next(root.glob("*/class_heads-s0"))
    dest = src.parent / "class_heads-s1234567"
    shutil.copytree(src, dest)
    meta = json.loads((dest / "run.json").read_text())
    meta["config"]["seed"] = 1234567
    (dest / "run.json").write_text(json.dumps(meta))
    with streamlit_server(root, tiny_folder.parent, tmp_path / "streamlit.log") as srv:
        yield srv


def _is_local(url: str, port: int) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and parts.netloc in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
    )


def test_every_page_loads_with_the_internet_blocked(server):
    port = server["port"]
    outside: list[str] = []  # "page: METHOD url (resource type)"
    current = {"path": "(none)"}

    def block_outside(route, request):
        if _is_local(request.url, port):
            route.continue_()
        else:
            outside.append(
                f"{current['path']}: {request.method} {request.url} ({request.resource_type})"
            )
            route.abort("blockedbyclient")

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        context.route("**/*", block_outside)
        page = context.new_page()
        page.set_default_timeout(90_000)

        def outside_websocket(ws):  # websockets are not routed: record any that leaves
            if not _is_local(ws.url, port):
                outside.append(f"{current['path']}: websocket {ws.url}")

        page.on("websocket", outside_websocket)
        dom_outside: set[str] = set()
        cut: list[str] = []  # run chips whose label is cut
        seconds: dict[str, float] = {}
        for path, title in PAGES.items():
            current["path"] = path
            t0 = time.perf_counter()
            page.goto(server["url"] + path)  # a fresh load each time: favicon, fonts, chunks
            page.get_by_role("heading", name=title).first.wait_for()
            page.locator(IDLE).wait_for()
            page.wait_for_timeout(300)  # a rerun queued right after the first one; late fetches
            page.locator(IDLE).wait_for()
            page.wait_for_load_state("networkidle")
            seconds[path] = time.perf_counter() - t0
            boxes = page.locator(EXCEPTION)
            if boxes.count():
                pytest.fail(f"{path}: Streamlit exception: {boxes.first.inner_text()[:2000]}")
            for text, full, shown in page.evaluate(CHIPS):
                if full > shown + 1:
                    cut.append(f"{path}: '{text}' ({full} px of text in {shown} px)")
            for item in page.evaluate(DOM_RESOURCES):
                kind, _, url = item.partition(" ")
                if not _is_local(url, port):
                    dom_outside.add(f"{path}: <{kind}> {url}")
        browser.close()

    print("\n" + "\n".join(f"{path:<14} {s:6.2f} s" for path, s in seconds.items()))
    problems = []
    if outside:
        problems.append("requests outside the server were made (blocked):\n" + "\n".join(outside))
    if dom_outside:
        problems.append("the DOM names outside resources:\n" + "\n".join(sorted(dom_outside)))
    if cut:
        problems.append("sidebar chips cut their run label:\n" + "\n".join(cut))
    assert not problems, "\n".join(problems)
