"""End to end in headless Chromium: every page renders, an upload is explained, a run trains.

Starts ``streamlit run app.py`` on a free port against a private copy of the tiny runs, drives it
with Playwright, saves a screenshot of every page into ``test-artifacts/screenshots/`` and prints
each page's time to interactive (first visit and warm).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import streamlit_server

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-artifacts" / "screenshots"
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
EXCEPTION = '[data-testid="stException"]'

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
    from csba.diagnostics.run import diagnose_run

    root = tmp_path / "runs"
    real = os.environ.get("CSBA_E2E_RUNS_ROOT")  # measure against real runs, e.g. checkpoints/
    if real:
        shutil.copytree(real, root)
    else:
        shutil.copytree(tiny_runs["baseline"].parent.parent, root)
        for run_dir in sorted(root.glob("*/*-s0")):  # so the diagnostics pages have content
            diagnose_run(str(run_dir), per_class=8, device="cpu")
    log = tmp_path / "streamlit.log"
    # The Attributions page does not wait for its computations: every upload goes through the
    # polling path (quick maps, then Integrated Gradients filled in by the fragment).
    with streamlit_server(root, tiny_folder.parent, log, CSBA_ATTRIBUTION_WAIT_S="0") as srv:
        yield {"url": srv["url"], "root": root, "data": tiny_folder, "log": log, "pid": srv["pid"]}


def _settle(page, title: str, timeout: float = 90_000) -> None:
    """Wait until the page's title is shown and no script run is in progress."""
    page.get_by_role("heading", name=title).first.wait_for(timeout=timeout)
    page.locator(IDLE).wait_for(timeout=timeout)
    page.wait_for_timeout(150)  # a rerun queued right after the first one (e.g. a fragment)
    page.locator(IDLE).wait_for(timeout=timeout)


def _no_exception(page, where: str) -> None:
    boxes = page.locator(EXCEPTION)
    if boxes.count():
        pytest.fail(f"{where}: Streamlit exception: {boxes.first.inner_text()[:2000]}")


def _rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _shot(page, name: str) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside its main container, so the
    viewport is made as tall as the content for the shot."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.evaluate(
        """() => Math.max(document.body.scrollHeight, ...Array.from(
            document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"]'),
            (e) => e.scrollHeight))"""
    )
    page.set_viewport_size({"width": size["width"], "height": min(max(height, 600), 6000)})
    page.wait_for_timeout(400)  # plotly re-lays out on resize
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size(size)


def test_every_page_in_chromium(server):
    timings: dict[str, list[float]] = {}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(90_000)
        t0 = time.perf_counter()
        page.goto(server["url"])
        _settle(page, "CSBA Explorer")
        timings["(first load of the app)"] = [time.perf_counter() - t0]
        links = page.locator('[data-testid="stSidebarNavLink"]')
        # inner text is "<material icon name>\n\n<title>"
        names = [links.nth(i).inner_text().strip().splitlines()[-1] for i in range(links.count())]
        assert {"Attributions", "Training", "Gradient conflict"} <= set(names), names
        titles = {
            "Runs": "CSBA Explorer",
            "Confusion matrices": "Confusion matrices",
            "Per-class F1": "Per-class precision, recall and F1",
            "Gradient conflict": "Gradient conflict",
            "Attention": "Attention",
            "Attributions": "Attributions",
            "Training": "Training",
        }
        # Two passes: first visit (cold caches), then warm.
        for visit in range(2):
            for name in names:
                t0 = time.perf_counter()
                page.locator('[data-testid="stSidebarNavLink"]', has_text=name).first.click()
                _settle(page, titles.get(name, name))
                timings.setdefault(name, []).append(time.perf_counter() - t0)
                _no_exception(page, name)
                if visit == 0:
                    _shot(page, name.lower().replace(" ", "_").replace("-", "_"))
        rss_mib = _rss_mib(server["pid"])  # after every page has been visited twice

        # Attributions: upload an image, see the maps.
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Attributions").first.click()
        _settle(page, "Attributions")
        page.get_by_text("Upload", exact=True).click()
        page.locator(IDLE).wait_for()
        page.locator('input[type="file"]').set_input_files(str(server["data"] / "beta" / "003.png"))
        page.get_by_text("uploaded: 003.png").first.wait_for()
        # the IG map's caption (exact), not the "Integrated Gradients: computing..." status
        page.get_by_text("Integrated Gradients", exact=True).first.wait_for()
        page.get_by_text("Saliency |d logit / d x|", exact=True).first.wait_for()
        # every run's maps arrive by polling; then the page reruns once and stops polling
        sync_api.expect(page.get_by_text("computing...")).to_have_count(0, timeout=60_000)
        sync_api.expect(page.get_by_text("queued, ")).to_have_count(0, timeout=60_000)
        page.locator(IDLE).wait_for()
        _no_exception(page, "Attributions upload")
        _shot(page, "attributions_upload")

        # Training: one epoch, 32 px, the tiny image folder; wait until it is stored.
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Training").first.click()
        _settle(page, "Training")
        page.locator('[data-testid="stSelectbox"]', has_text="Dataset").click()
        page.get_by_role("option", name="imagefolder").click()
        page.locator(IDLE).wait_for()
        root_box = page.get_by_role("textbox", name="Data root (a folder of class folders)")
        root_box.fill(str(server["data"]))
        root_box.press("Enter")
        page.locator(IDLE).wait_for()
        for label, value in (("Epochs", "1"), ("Image size (px)", "32"), ("Seed", "5")):
            box = page.get_by_label(label, exact=True)
            box.fill(value)
            box.press("Enter")
            page.locator(IDLE).wait_for()
        t0 = time.perf_counter()
        page.get_by_role("button", name="Start training").click()
        try:  # the live view (the tiny job may finish before it is caught)
            page.get_by_text("Running job-").first.wait_for(timeout=5_000)
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=5_000)
            _shot(page, "training_running")
        except sync_api.TimeoutError:
            pass
        page.get_by_text("baseline s5: test macro-F1").wait_for(timeout=120_000)
        page.get_by_text("csba s5: test macro-F1").wait_for(timeout=120_000)
        train_s = time.perf_counter() - t0
        page.locator(IDLE).wait_for()
        _no_exception(page, "Training")
        _shot(page, "training_done")
        assert (server["root"] / "imagefolder-32px" / "baseline-s5" / "run.json").is_file()
        assert (server["root"] / "imagefolder-32px" / "csba-s5" / "run.json").is_file()

        # The new run is listed on the Runs page without a restart.
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Runs").first.click()
        _settle(page, "CSBA Explorer")
        _no_exception(page, "Runs after training")
        browser.close()

    print("\npage                   first visit   warm")
    for name, ts in timings.items():
        warm = f"{ts[-1]:.2f} s" if len(ts) > 1 else "-"
        print(f"{name:<22} {ts[0]:>9.2f} s   {warm}")
    print(f"training 2 tiny runs (1 epoch, 32 px): {train_s:.1f} s")
    print(f"server resident memory after visiting every page: {rss_mib:.0f} MiB")
    assert rss_mib > 0


def test_a_page_url_as_a_fresh_servers_first_request(server):
    """A bookmarked page (here /confusion) opened before anyone opened the root URL: app.py's
    navigation must still route it (Streamlit's old pages/ mode would run the page file alone
    and list every module of pages/, common and figures too, in the sidebar)."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(f"{server['url']}/confusion")
        _settle(page, "Confusion matrices")
        links = page.locator('[data-testid="stSidebarNavLink"]')
        page.get_by_text("Add run folders").first.wait_for()  # app.py's sidebar ran
        names = [links.nth(i).inner_text().strip().splitlines()[-1] for i in range(links.count())]
        assert "Runs" in names and "Protocols" in names, names
        assert "common" not in names and "figures" not in names, names
        _no_exception(page, "first request to /confusion")
        browser.close()


def test_four_users_at_a_cold_server(server):
    """Four browsers open a server nobody has visited yet, at once. Each session runs its script
    in its own thread; before app.py imported the pages' modules in one thread, Python's import
    locks handed some of them a half-initialised pages.common (ImportError on the page)."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        pages = [browser.new_page(viewport={"width": 1200, "height": 900}) for _ in range(4)]
        for page in pages:  # goto returns once the HTML shell loaded: the scripts overlap
            page.set_default_timeout(120_000)
            page.goto(server["url"])
        for i, page in enumerate(pages):
            _settle(page, "CSBA Explorer", timeout=120_000)
            _no_exception(page, f"cold server, user {i}")
        browser.close()
    assert "cannot import name" not in server["log"].read_text()


def _click_marker(page, chart, n: int) -> None:
    """Click cell ``n`` (row-major) of a clickable heatmap near a corner of the cell: the
    middle of its overlay marker (pages.fig_base.clickable_cells) shifted by a third of the
    cell. Hovers first until plotly shows a label: its click handler is bound by then."""
    cells = chart.locator(".heatmaplayer").first.bounding_box()
    box = chart.locator(".scatterlayer .trace .points path.point").nth(n).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    k = round(chart.locator(".scatterlayer .trace").first.locator("path.point").count() ** 0.5)
    x, y = x + cells["width"] / k / 3, y - cells["height"] / k / 3  # towards the top right
    for _ in range(50):
        page.mouse.move(x, y)
        if chart.locator(".hoverlayer .hovertext").count():
            break
        page.mouse.move(x - 5, y + 5)
        page.wait_for_timeout(100)
    page.mouse.click(x, y)


def _click_shows(page, chart, n: int, shown, tries: int = 3) -> None:
    """Click cell ``n`` until ``shown`` appears: on a loaded machine a click made while
    Streamlit still redraws the chart can be lost (a user would click again)."""
    for attempt in range(tries):
        _click_marker(page, chart, n)
        try:
            shown.wait_for(timeout=20_000)
            return
        except sync_api.TimeoutError:
            if attempt == tries - 1:
                raise


def _thumbnails(page):
    return page.locator('[data-testid="stImage"] img, [data-testid="stImageContainer"] img')


def test_a_click_on_a_conflict_cell_or_a_confusion_cell_shows_its_images(server):
    """Chromium: a click on cell (0, 1) of a conflict heatmap opens "Images behind a conflict"
    on that pair with thumbnails; a thumbnail's link opens the Attributions page on that
    training image; a click on a confusion cell shows its test images."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(server["url"] + "/conflict")
        _settle(page, "Gradient conflict")
        chart = page.locator('[data-testid="stPlotlyChart"]').first
        chart.locator(".scatterlayer .trace .points path.point").first.wait_for(state="attached")
        t0 = time.perf_counter()  # row 0, column 1: (class 0, class 1)
        _click_shows(page, chart, 1, page.get_by_text("most against", exact=False).first)
        _settle(page, "Gradient conflict")
        _thumbnails(page).first.wait_for()
        print(f"conflict cell -> thumbnails: {time.perf_counter() - t0:.2f} s")
        _no_exception(page, "conflict cell click")
        _shot(page, "conflict_cell_images")
        assert page.get_by_role("tab", name="Images behind a conflict", selected=True).count()
        texts = page.locator('[data-testid="stCaptionContainer"]').all_inner_texts()
        pair = [t for t in texts if t.startswith("Training images of ")]
        assert len(pair) >= 2 and " most against " in pair[0], pair
        assert _thumbnails(page).count() >= 2
        href = page.locator('[data-testid="stImage"] a, a:has(img)').first.get_attribute("href")
        assert href and "attributions?run=" in href and "split=train" in href, href
        page.goto(server["url"] + "/" + href.split("/")[-1])
        _settle(page, "Attributions")
        _no_exception(page, "a thumbnail's link")
        assert page.get_by_text("Linked image", exact=False).count()

        page.goto(server["url"] + "/confusion")
        _settle(page, "Confusion matrices")
        chart = page.locator('[data-testid="stPlotlyChart"]').first
        chart.locator(".scatterlayer .trace .points path.point").first.wait_for(state="attached")
        # the first run (baseline s0) and its fullest cell, from its stored test predictions
        pred = json.loads(next(server["root"].glob("*/baseline-s0/run.json")).read_text())
        yt, yp = pred["predictions"]["test"]["y_true"], pred["predictions"]["test"]["y_pred"]
        C = len(pred["classes"])
        counts = np.bincount(np.asarray(yt) * C + np.asarray(yp), minlength=C * C)
        cell = int(counts.argmax())
        t0 = time.perf_counter()
        want = f"{counts[cell]} test images of {pred['classes'][cell // C]} predicted "
        _click_shows(page, chart, cell, page.get_by_text(want + pred["classes"][cell % C]).first)
        _settle(page, "Confusion matrices")
        print(f"confusion cell -> images: {time.perf_counter() - t0:.2f} s")
        _no_exception(page, "confusion cell click")
        _shot(page, "confusion_cell_images")
        block = page.locator('[data-testid="stColumn"]', has_text=want).last
        from pages.confusion_images import K

        assert block.locator("img").count() == min(K, int(counts[cell]))
        browser.close()
