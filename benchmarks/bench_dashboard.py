"""How fast the dashboard answers: every page, N users at once, in headless Chromium.

    python benchmarks/bench_dashboard.py [--runs checkpoints] [--users 1 4 8] [--repeats 1]
                                         [--pages home confusion ...] [--timeout 30]
                                         [--compare REV] [--json FILE] [--profile DIR]
                                         [--fresh-browser]

Starts ``streamlit run app.py`` headless on a free port against --runs (default: the shipped
runs), with ``CSBA_SCRIPT_LOG`` set so the server logs the time of each script run itself. For
each user count N it opens N browser sessions at once (one Chromium, one context each); every
session first visits every page once (its "first view": Streamlit loads each element's script,
plotly.js included, the first time a browser session draws it; --fresh-browser measures those
visits instead), then visits every page again through the sidebar (default selections), timed,
and makes one interaction there: it removes the last run from the page's run picker (Runs: picks an extra backbone,
its name typed untimed; Protocols and Training: none), and on Attributions it uploads an image
of its own (a different ELPV test cell per session; measured rounds upload cells no earlier
round did, so their attributions are computed, not cached) and then records the time to the
page's answer (the upload shown, with maps or queue places), to the first run's maps and to
every run's. One single-user round, then one warm-up round per user count fill the server's
caches first; the measured rounds follow (--repeats).

Per page it reports the server's script time per view (median, from the log), the browser's
time from the click to the app being idle again (median and 95th percentile over sessions and
rounds; a fixed 150 ms settle wait is subtracted; an interaction other than the upload is
timed to the end of the last script run it caused, read from the page's websocket, as a
fragment rerun can be too fast for the page's script state to show), errors (Streamlit
exceptions on the page) and timeouts (a view not idle within --timeout s), and the server's
peak resident memory.

``--compare REV`` checks out REV (any git revision) into a temporary worktree, starts its server
too, and runs the same rounds against both, alternating which goes first, then prints the
ratios REV / this per page. Machines here drift by up to 2x between minutes: read the ratios.

``--profile DIR`` samples each server with py-spy (``pip install py-spy``) during the measured
rounds, keeps the raw profiles in DIR and prints where the server's time went, per package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere
CHROMIUM = "/usr/bin/chromium"
SHOTS = os.environ.get("BENCH_SHOTS")  # a folder: a screenshot of every view that timed out
# each session visits every page once (timed as "first view") before the measured pass;
# --fresh-browser: measure the first visits instead (a browser that has never seen the app)
FIRST_PASS = True
SETTLE_MS = 150  # a rerun queued right after the first (a fragment): waited for, subtracted

# url path -> (sidebar link title, heading the page shows)
PAGES = {
    "home": ("Runs", "CSBA Explorer"),
    "confusion": ("Confusion matrices", "Confusion matrices"),
    "f1": ("Per-class F1", "Per-class precision, recall and F1"),
    "protocols": ("Protocols", "Protocols"),
    "conflict": ("Gradient conflict", "Gradient conflict"),
    "attention": ("Attention", "Attention"),
    "attributions": ("Attributions", "Attributions"),
    "training": ("Training", "Training"),
}

# Records the app's script-state changes with their time (performance.now(), ms).
OBSERVE = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  window.__states = [[performance.now(), app.getAttribute('data-test-script-state')]];
  new MutationObserver(() => window.__states.push(
      [performance.now(), app.getAttribute('data-test-script-state')]
  )).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  window.__lastMut = performance.now();
  new MutationObserver(() => { window.__lastMut = performance.now(); }).observe(
      document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""
# The page drawn: the last change to the page's DOM once it has been still for `quiet` ms
# (plotly draws its figures after the script's last message; a blocked main thread delays
# this poll too, so a long draw is counted, not mistaken for stillness).
DRAWN = """([t0, quiet]) => performance.now() - window.__lastMut >= quiet
    ? Math.max(window.__lastMut, t0) : null"""
QUIET_MS = 500
# a view's time split: "served" ends with the server's last script_finished before the page
# went idle (from the websocket); the rest is the browser's
# "view cpu": the page's renderer main thread's CPU seconds from the click to "drawn" (Chrome
# DevTools Performance.getMetrics TaskDuration in thread ticks): the browser's own work for a
# view (layout, scripts, plotly drawing), whatever else shares the machine's cores
EXTRA_KINDS = (
    "view served", "view drawn", "interaction drawn", "view cpu", "cell", "first view",
    "first cell",
)  # fmt: skip
# True once a run started after t0 (or was still running at t0: a click during a rerun joins
# it without a new 'running' edge) and the app is idle again; returns the idle time then.
# A view whose script is fast may never show 'running' (the browser draws both state changes
# at once): then the view is done when its URL and heading are on screen and the app is idle.
MARK_VIEW = """([path, heading]) => {
  window.__viewAt = null;
  clearInterval(window.__viewTimer);
  const app = document.querySelector('[data-testid="stApp"]');
  const id = window.__viewTimer = setInterval(() => {
    const h1 = [...document.querySelectorAll('h1')].some(h => h.textContent.includes(heading));
    if (location.pathname === path && h1
        && app.getAttribute('data-test-script-state') === 'notRunning') {
      window.__viewAt = performance.now();
      clearInterval(id);
    }
  }, 50);
}"""
IDLE_AFTER = """(t0) => {
  if (window.__viewAt) return window.__viewAt;
  const before = window.__states.filter(x => x[0] <= t0);
  const busy = before.length > 0 && before[before.length - 1][1] === 'running';
  const s = window.__states.filter(x => x[0] > t0);
  const ran = busy || s.some(x => x[1] === 'running');
  const last = window.__states[window.__states.length - 1];
  return ran && last[1] === 'notRunning' ? last[0] : null;
}"""

# The first moment no `stSkeleton` placeholder is on the page (Streamlit shows one where an
# element is still to come, e.g. while a tab's content or a chart waits for the script).
NO_SKELETON = """() => document.querySelector('[data-testid="stSkeleton"]')
    ? null : performance.now()"""
# Pages with clickable heatmaps: the timed "cell" step clicks cell (0, 1) of the first one and
# waits for the thumbnails it opens (every <img> under the images' heading loaded).
CELL_PAGES = {"conflict": "most against", "confusion": " test images of "}
THUMBS_LOADED = """(text) => {
  const caps = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')];
  if (!caps.some(c => c.innerText.includes(text))) return null;
  const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
  return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0)
      && !document.querySelector('[data-testid="stSkeleton"]') ? performance.now() : null;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run app.py`` from ``checkout`` on a free port, logging its script times."""

    def __init__(self, checkout: Path, runs: Path, label: str):
        self.label, self.port = label, _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-dash-{label}-"))
        self.script_log = self.dir / "scripts.jsonl"
        env = dict(os.environ, CSBA_RUNS_ROOT=str(runs), CSBA_SCRIPT_LOG=str(self.script_log))
        env["CSBA_CACHE"] = os.environ.get("CSBA_CACHE", str(self.dir / "cache"))
        cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
        cmd += ["--server.port", str(self.port), "--browser.gatherUsageStats", "false"]
        self.log = open(self.dir / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=self.log, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"{label}: the dashboard did not start; see {self.dir / 'server.log'}")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def script_times(self, since: float) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        if not self.script_log.is_file():
            return out  # an older checkout without CSBA_SCRIPT_LOG
        for line in self.script_log.read_text().splitlines():
            rec = json.loads(line)
            if rec["t"] >= since and rec.get("finished"):
                out.setdefault(rec["page"] or "home", []).append(rec["seconds"])
        return out

    def start_profile(self, out: Path) -> None:
        """py-spy samples the server (active threads only) until stop_profile()."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        cmd = [spy, "record", "--format", "raw", "--rate", str(PROFILE_HZ), "--nonblocking"]
        self.spy = subprocess.Popen(
            [*cmd, "-o", str(out), "-p", str(self.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_profile(self) -> None:
        self.spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        self.spy.wait(timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# Where a sample's time goes: the leaf-most frame from one of these packages (a frame of the
# standard library, e.g. copy.py under plotly, counts for the package that called it).
PROFILE_HZ = 50  # py-spy samples per second
PROFILE_BUCKETS = (
    ("torch / Captum", ("/torch/", "/captum/")),
    ("plotly", ("/plotly/", "/_plotly_utils/")),
    ("pandas / numpy", ("/pandas/", "/numpy/", "/pyarrow/")),
    ("Streamlit", ("/streamlit/",)),
    ("serving (tornado, asyncio)", ("/tornado/", "/asyncio/")),
    ("csba + pages", ("/csba/", "/pages/", "/app.py")),
)


# py-spy names a file relative to the sys.path entry it was found under ("streamlit/...",
# "csba/train.py"; a page as "home.py", its folder being on sys.path while it runs)
LOCAL_FILES = frozenset(["app.py", *(f.name for f in (REPO / "pages").glob("*.py"))])


def profile_samples(path: Path) -> dict[str, int]:
    """Samples of a py-spy raw (collapsed stacks) profile per PROFILE_BUCKETS entry, "other"
    for the rest. A sample counts for the leaf-most frame that belongs to a bucket (a stdlib
    frame counts for its caller's package)."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        bucket = "other"
        for frame in reversed(stack.split(";")):
            file = frame.rpartition(" (")[2].rpartition(":")[0]  # "name (file:line)"
            where = "/" + file.lstrip("/")
            hit = next((b for b, marks in PROFILE_BUCKETS if any(m in where for m in marks)), None)
            if hit is None and file in LOCAL_FILES:
                hit = "csba + pages"
            if hit:
                bucket = hit
                break
        counts[bucket] = counts.get(bucket, 0) + int(n)
    return counts


def profile_summary(path: Path) -> dict[str, float]:
    """Each bucket's share of the samples (profile_samples), largest first; {} when none."""
    counts = profile_samples(path)
    total = sum(counts.values())
    return {b: c / total for b, c in sorted(counts.items(), key=lambda x: -x[1])} if total else {}


def upload_images(n: int, out: Path) -> list[Path]:
    """n different ELPV test cells as PNG files (one per session)."""
    import numpy as np
    from PIL import Image

    from csba.data import load_dataset

    test = load_dataset("elpv", 128).split("test")
    paths = []
    for i in range(n):
        img = np.asarray(test.images[(7 * i + 3) % len(test.images)]).squeeze()
        img = img if img.dtype == np.uint8 else (255 * (img - img.min()) / np.ptp(img)).astype("u1")
        paths.append(out / f"cell-{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def _url(server: Server, name: str) -> str:
    """A page's address (st.navigation: the file's stem; the default page at the root)."""
    return f"{server.url}/" if name == "home" else f"{server.url}/{name}"


async def _wait_idle(page, t0: float, timeout_s: float) -> float | None:
    """Seconds from t0 (page clock, ms) to the app idle again, or None after timeout_s."""
    try:
        handle = await page.wait_for_function(IDLE_AFTER, arg=t0, timeout=timeout_s * 1000)
        first = await handle.json_value()
        await page.wait_for_timeout(SETTLE_MS)  # a queued rerun (fragment) must finish too
        handle = await page.wait_for_function(IDLE_AFTER, arg=t0, timeout=timeout_s * 1000)
        last = await handle.json_value()
        done = max(first, last)
        # a view is not shown while a placeholder stands in for an element still to come
        handle = await page.wait_for_function(NO_SKELETON, timeout=timeout_s * 1000)
        if (gone := await handle.json_value()) > done + SETTLE_MS:
            return (gone - t0) / 1000
        return (done - t0) / 1000 - (SETTLE_MS / 1000 if last > first else 0)
    except Exception:  # playwright's TimeoutError
        return None


async def _drawn(page, t0: float, took: float, timeout_s: float) -> float | None:
    """Seconds from t0 (page clock, ms) to the page drawn (DRAWN), at least `took` (the app
    idle); None when the page never kept still for QUIET_MS within timeout_s."""
    try:
        handle = await page.wait_for_function(DRAWN, arg=[t0, QUIET_MS], timeout=timeout_s * 1000)
        return max(took, (await handle.json_value() - t0) / 1000)
    except Exception:  # playwright's TimeoutError
        return None


def _watch_runs(page, events: list) -> None:
    """Appends (time.perf_counter(), kind, status) for every script start ("new_session") and
    end ("script_finished") the server sends this page, read from its websocket: unlike the
    page's script state, this also sees a fragment rerun too fast for the browser to draw."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    def frame(payload) -> None:
        if not isinstance(payload, bytes | bytearray):
            return
        try:
            msg = ForwardMsg.FromString(bytes(payload))
        except Exception:  # protobuf's DecodeError: not a ForwardMsg, not ours to read
            return
        kind = msg.WhichOneof("type")
        if kind in ("new_session", "script_finished"):
            status = msg.script_finished if kind == "script_finished" else None
            events.append((time.perf_counter(), kind, status))

    page.on("websocket", lambda ws: ws.on("framereceived", frame))


def _served(events: list, t0: float, took: float) -> float | None:
    """Seconds from t0 (time.perf_counter()) to the server's last script_finished up to the
    page's idle (t0 + took, 50 ms slack for the two clocks); None when none came."""
    ends = [e[0] for e in events if e[1] == "script_finished" and t0 < e[0] <= t0 + took + 0.05]
    return max(ends) - t0 if ends else None


async def _wait_finished(page, events: list, t0: float, timeout_s: float) -> float | None:
    """Seconds from t0 (time.perf_counter()) to the last script run that ends after it, once
    no other run follows within SETTLE_MS; None after timeout_s."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    early = ForwardMsg.ScriptFinishedStatus.FINISHED_EARLY_FOR_RERUN
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        after = [e for e in events if e[0] > t0]
        if after and after[-1][1] == "script_finished" and after[-1][2] != early:
            n = len(events)
            await page.wait_for_timeout(SETTLE_MS)
            if len(events) == n:
                return after[-1][0] - t0
        else:
            await page.wait_for_timeout(20)
    return None


async def _prepare(page, name: str, timeout_s: float) -> None:
    """What precedes a page's timed interaction, untimed: on Attributions, choosing "Upload"
    (the upload is timed from the file's arrival, as a user's file dialog is not part of it);
    on Runs, opening the parameter table's expander where there is one, then typing the
    backbone's name into the picker (timed from the Enter that picks it: under load,
    playwright's own typing took seconds)."""
    if name == "home":
        box = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Also on backbones")
        params = page.get_by_text("Parameters of every variant", exact=False)
        if not await box.count() and await params.count():  # an expander since 593896a
            t0 = await page.evaluate("performance.now()")
            await params.first.click()
            await _wait_idle(page, t0, timeout_s)
            await box.wait_for(timeout=timeout_s * 1000)
        await box.locator("input").click()
        await box.locator("input").fill("resnet18")
    if name == "attributions":
        t0 = await page.evaluate("performance.now()")
        await page.get_by_text("Upload", exact=True).first.click()
        await page.locator('[data-testid="stFileUploaderDropzoneInput"]').wait_for(
            state="attached", timeout=60_000
        )
        await _wait_idle(page, t0, timeout_s)


async def _interact(page, name: str, image: Path) -> bool:
    """One interaction on the page; False when the page has none."""
    if name == "attributions":  # the "Upload" choice made before (_prepare): not timed
        await page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(image)
        return True
    if name == "home":  # the name typed before (_prepare)
        await page.keyboard.press("Enter")
        await page.keyboard.press("Escape")
        return True
    if name in ("protocols", "training"):
        return False
    chips = page.locator(
        '[data-testid="stSidebar"] [data-testid="stMultiSelectTagsContainer"] '
        'button[aria-label^="Remove"]'
    )
    if await chips.count() < 2:
        return False
    await chips.last.click()
    return True


async def _cell(page, name: str, timeout_s: float) -> float | None:
    """Seconds from a click on cell (0, 1) of the page's first heatmap to its thumbnails on
    screen (THUMBS_LOADED) and the app idle; None when they never came. Untimed first: a hover
    until plotly answers (its click handler is bound then), as a user's pointer would."""
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    point = chart.locator(".scatterlayer .trace .points path.point").nth(1)
    try:
        await chart.wait_for(timeout=timeout_s * 1000)
        await point.wait_for(state="attached", timeout=5_000)  # none: heatmaps not clickable
        box = await point.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        for _ in range(50):
            await page.mouse.move(x, y)
            if await chart.locator(".hoverlayer .hovertext").count():
                break
            await page.mouse.move(x - 5, y + 5)
            await page.wait_for_timeout(100)
        t0 = await page.evaluate("performance.now()")
        await page.mouse.click(x, y)
        handle = await page.wait_for_function(
            THUMBS_LOADED, arg=CELL_PAGES[name], timeout=timeout_s * 1000
        )
        shown = await handle.json_value()
        idle = await _wait_idle(page, t0, timeout_s)
        return max((shown - t0) / 1000, idle or 0.0)
    except Exception as e:  # playwright's TimeoutError: no thumbnails
        print(f"{name}: cell click failed: {e!s:.120}")
        return None


# After an upload, marks (performance.now(), ms) the first moment each stage shows, polled in
# the page while the benchmark waits for idle: the page's answer (this upload's caption, with
# maps or queue places), the first run's complete maps (an Integrated Gradients caption is a
# line of its own; its status line reads "Integrated Gradients: ...") and every run's (no
# 'computing...' or 'queued, ...' status left).
MARK_UPLOAD = """() => {
  window.__marks = {};
  const up = () => document.body.innerText.includes('uploaded: cell-');
  const ig = () => up() && /(^|\\n)Integrated Gradients(\\n|$)/.test(document.body.innerText);
  const tests = {
    'answered': up,
    'first maps': ig,
    'all maps': () => ig() && !/computing\\.\\.\\.|queued, /.test(document.body.innerText),
  };
  const id = setInterval(() => {
    for (const k in tests) {
      if (!(k in window.__marks) && tests[k]()) window.__marks[k] = performance.now();
    }
    if (Object.keys(window.__marks).length === 3) clearInterval(id);
  }, 50);
}"""


async def _maps_arrive(page, t0: float, errors: int) -> list[dict]:
    """Seconds from the upload (t0) to each stage MARK_UPLOAD marks; None past 120 s."""
    # playwright's TimeoutError: the stages not reached stay None
    with contextlib.suppress(Exception):
        await page.wait_for_function(
            "() => Object.keys(window.__marks).length === 3", timeout=120_000
        )
    marks = await page.evaluate("window.__marks")
    return [
        {
            "page": "attributions",
            "kind": kind,
            "seconds": (marks[kind] - t0) / 1000 if kind in marks else None,
            "errors": errors,
        }
        for kind in MAP_KINDS
    ]


async def _cpu_s(cdp) -> float:
    """CPU seconds the page's renderer main thread has spent on tasks so far."""
    metrics = (await cdp.send("Performance.getMetrics"))["metrics"]
    return next(m["value"] for m in metrics if m["name"] == "TaskDuration")


async def _open(page, server: Server, name: str, timeout_s: float) -> float | None:
    """Click page ``name``'s sidebar link; seconds to the app idle on it, or None."""
    t0 = await page.evaluate("performance.now()")
    link, heading = PAGES[name]
    await page.evaluate(MARK_VIEW, ["/" + ("" if name == "home" else name), heading])
    await (
        page.locator('[data-testid="stSidebarNav"]')
        .get_by_role("link", name=link, exact=True)
        .click()
    )
    took = await _wait_idle(page, t0, timeout_s)
    await page.wait_for_url(_url(server, name), timeout=timeout_s * 1000)
    return took


async def _first_pass(page, server: Server, pages, away: str, timeout_s: float, rec) -> None:
    """A browser session's first visit to each page (and its cell step), timed as "first view"
    and "first cell": Streamlit loads each element's script (plotly.js: about 1.3 s here) the
    first time a session draws that element, which a user pays once, not on every view. Then
    back to ``away``, so that the measured pass opens every page afresh."""
    for name in pages:
        took = await _open(page, server, name, timeout_s)
        rec.append({"page": name, "kind": "first view", "seconds": took, "errors": 0})
        if name in CELL_PAGES:
            took = await _cell(page, name, timeout_s)
            rec.append({"page": name, "kind": "first cell", "seconds": took, "errors": 0})
    await _open(page, server, away, timeout_s)


async def session(browser, server: Server, pages, image: Path, timeout_s: float, rec: list):
    """One user: every page through the sidebar, then its interaction; appends to rec."""
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    runs: list = []  # script starts and ends, from the websocket (_watch_runs)
    _watch_runs(page, runs)
    cdp = await ctx.new_cdp_session(page)
    await cdp.send("Performance.enable", {"timeDomain": "threadTicks"})
    try:
        await page.goto(server.url, timeout=120_000)
        await page.get_by_role("heading", name="CSBA Explorer").first.wait_for(timeout=120_000)
        await page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
            timeout=120_000
        )
        # the app opens on Runs: a click on the page already shown reruns nothing, so go to
        # another page first, or the first measured view would wait for a run that never comes
        # (its URL first: a heading is also found while the old page is still on screen)
        away = next(p for p in ("training", "protocols", *PAGES) if p != pages[0])
        nav = page.locator('[data-testid="stSidebarNav"]')
        await nav.get_by_role("link", name=PAGES[away][0], exact=True).click()
        await page.wait_for_url(_url(server, away), timeout=120_000)
        await page.get_by_role("heading", name=PAGES[away][1]).first.wait_for(timeout=120_000)
        await page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
            timeout=120_000
        )
        await page.evaluate(OBSERVE)
        if FIRST_PASS:  # a user who has been here before: the browser holds the app's scripts
            await _first_pass(page, server, pages, away, timeout_s, rec)
        for name in pages:
            link, heading = PAGES[name]
            for kind in ("view", "interaction", "cell"):
                if kind == "cell":  # the view's first heatmap cell to its thumbnails
                    if name in CELL_PAGES:
                        took = await _cell(page, name, timeout_s)
                        rec.append({"page": name, "kind": "cell", "seconds": took, "errors": 0})
                    continue
                t0 = await page.evaluate("performance.now()")
                t0_py = time.perf_counter()
                cpu0 = await _cpu_s(cdp)
                await page.evaluate("window.__viewAt = null")
                if kind == "view":
                    path = "/" + ("" if name == "home" else name)
                    await page.evaluate(MARK_VIEW, [path, heading])
                    nav = page.locator('[data-testid="stSidebarNav"]')
                    await nav.get_by_role("link", name=link, exact=True).click()
                else:
                    try:
                        await _prepare(page, name, timeout_s)
                        if name == "attributions":
                            await page.evaluate(MARK_UPLOAD)
                        t0 = await page.evaluate("performance.now()")
                        t0_py = time.perf_counter()
                        if not await _interact(page, name, image):
                            continue
                    except Exception as e:  # playwright's TimeoutError: the widget never came
                        rec.append({"page": name, "kind": kind, "seconds": None, "errors": 0})
                        print(f"{server.label}: {name}: interaction failed: {e!s:.120}")
                        continue
                if kind == "interaction" and name != "attributions":
                    # a widget change may rerun only a fragment, which the page's script
                    # state can miss: its end is read from the websocket instead
                    took = await _wait_finished(page, runs, t0_py, timeout_s)
                else:
                    took = await _wait_idle(page, t0, timeout_s)
                if kind == "view" and took is not None:
                    try:  # idle but not on the page yet: counts as a timeout
                        await page.wait_for_url(_url(server, name), timeout=timeout_s * 1000)
                        await page.get_by_role("heading", name=heading).first.wait_for(
                            timeout=timeout_s * 1000
                        )
                    except Exception:  # playwright's TimeoutError
                        took = None
                errors = await page.locator('[data-testid="stException"]').count()
                rec.append({"page": name, "kind": kind, "seconds": took, "errors": errors})
                if kind == "view" and took is not None:
                    rec.append({"page": name, "kind": "view served", "errors": errors,
                                "seconds": _served(runs, t0_py, took)})  # fmt: skip
                if took is not None and not (name == "attributions" and kind == "interaction"):
                    # (the upload's later stages are MARK_UPLOAD's)
                    rec.append({"page": name, "kind": f"{kind} drawn", "errors": errors,
                                "seconds": await _drawn(page, t0, took, timeout_s)})  # fmt: skip
                    if kind == "view":
                        rec.append({"page": name, "kind": "view cpu", "errors": errors,
                                    "seconds": await _cpu_s(cdp) - cpu0})  # fmt: skip
                if took is None:  # what the page did instead, for the reader
                    if SHOTS:
                        shot = Path(SHOTS) / f"{server.label}-{name}-{kind}-{int(t0)}.png"
                        await page.screenshot(path=shot, full_page=True)
                    states = await page.evaluate(f"window.__states.filter(x => x[0] > {t0})")
                    print(
                        f"{server.label}: {name} {kind} timed out; state changes after the "
                        f"click (s): {[(round((t - t0) / 1000, 2), x) for t, x in states][:8]}"
                    )
                if took is None:  # let it finish before the next step (up to 60 s more)
                    await _wait_idle(page, t0, 60)
                if name == "attributions" and kind == "interaction":
                    rec += await _maps_arrive(page, t0, errors)
    finally:
        await ctx.close()


async def one_round(server: Server, users: int, pages, images, timeout_s: float) -> list[dict]:
    from playwright.async_api import async_playwright

    rec: list[dict] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            await asyncio.gather(
                *(session(browser, server, pages, images[u], timeout_s, rec) for u in range(users))
            )
        finally:
            await browser.close()
    return rec


MAP_KINDS = ("answered", "first maps", "all maps")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def summarise(rec: list[dict], scripts: dict[str, list[float]], pages) -> dict[str, dict]:
    out = {}
    for name in pages:
        row = {}
        for kind in ("view", "interaction"):
            rs = [r for r in rec if r["page"] == name and r["kind"] == kind]
            ok = [r["seconds"] for r in rs if r["seconds"] is not None]
            row[kind] = {
                "n": len(rs),
                "median": statistics.median(ok) if ok else float("nan"),
                "p95": _pct(ok, 0.95),
                "timeouts": len(rs) - len(ok),
                "errors": sum(r["errors"] > 0 for r in rs),
            }
        for kind in (*EXTRA_KINDS, *MAP_KINDS):
            ok = [r["seconds"] for r in rec if r["page"] == name and r["kind"] == kind]
            if ok:
                done = [x for x in ok if x is not None]
                row[kind] = {
                    "n": len(ok),
                    "median": statistics.median(done) if done else float("nan"),
                    "p95": _pct(done, 0.95),
                    "timeouts": len(ok) - len(done),
                }
        s = scripts.get(name, [])
        row["script"] = {"median": statistics.median(s) if s else float("nan"), "n": len(s)}
        out[name] = row
    return out


def _print(label: str, users: int, summary: dict, rss: float) -> None:
    nan = {"median": float("nan"), "p95": float("nan")}
    print(f"\n{label}, {users} user(s) at once; server peak RSS {rss:.0f} MiB")
    print(
        f"{'page':<13} {'script s':>8} {'served':>8} {'view med':>8} {'view p95':>8} "
        f"{'drawn':>8} {'cpu':>6} {'act med':>8} {'act p95':>8} {'drawn':>8} {'errors':>6} "
        f"{'timeouts':>8}"
    )
    for name, r in summary.items():
        v, a = r["view"], r["interaction"]
        vs, vd = r.get("view served", nan), r.get("view drawn", nan)
        ad, vc = r.get("interaction drawn", nan), r.get("view cpu", nan)
        print(
            f"{name:<13} {r['script']['median']:>8.2f} {vs['median']:>8.2f} "
            f"{v['median']:>8.2f} {v['p95']:>8.2f} {vd['median']:>8.2f} {vc['median']:>6.2f} "
            f"{a['median']:>8.2f} "
            f"{a['p95']:>8.2f} {ad['median']:>8.2f} {v['errors'] + a['errors']:>6} "
            f"{v['timeouts'] + a['timeouts']:>8}"
        )
        if "first view" in r:
            m, c = r["first view"], r.get("first cell")
            cell = f", its cell -> thumbnails {c['median']:.2f} s" if c else ""
            print(f"  first view in a fresh browser session: median {m['median']:.2f} s{cell}")
        if "cell" in r:
            m = r["cell"]
            print(
                f"  cell click -> thumbnails: median {m['median']:.2f} s, p95 {m['p95']:.2f} s, "
                f"{m['timeouts']} failed"
            )
        for kind in MAP_KINDS:
            if kind in r:
                m = r[kind]
                print(
                    f"  upload -> {kind:<10}: median {m['median']:.2f} s, p95 {m['p95']:.2f} s, "
                    f"{m['timeouts']} past 120 s"
                )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=Path, default=REPO / "checkpoints")
    ap.add_argument("--users", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--repeats", type=int, default=1, help="measured rounds per user count")
    ap.add_argument("--pages", nargs="+", choices=list(PAGES), default=list(PAGES))
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a view times out")
    ap.add_argument(
        "--fresh-browser",
        action="store_true",
        help="measure each session's first visit to each page (the browser loads the app's "
        "scripts then) instead of a visit by a browser that has opened every page once",
    )
    ap.add_argument("--compare", metavar="REV", help="also measure this git revision, interleaved")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy each server during the measured rounds; raw profiles and a summary here",
    )
    args = ap.parse_args(argv)
    global FIRST_PASS
    FIRST_PASS = not args.fresh_browser
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"needs Debian's chromium at {CHROMIUM}")
    work = Path(tempfile.mkdtemp(prefix="bench-dash-"))
    worktree = None
    servers = [Server(REPO, args.runs.resolve(), "this")]
    try:
        if args.compare:
            worktree = work / "rev"
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree),
                 args.compare], check=True, capture_output=True,
            )  # fmt: skip
            servers.append(Server(worktree, args.runs.resolve(), args.compare))
        # measured rounds upload cells no earlier round uploaded: their attributions are
        # computed then, not read from the cache the warm-up filled
        n = max(args.users)
        images = upload_images(n * (2 + args.repeats), work)
        results: dict = {"pages": args.pages, "users": {}}
        for s in servers:  # one user first: a cold server's first imports (see app.py)
            asyncio.run(one_round(s, 1, args.pages, images, 300))
        for users in args.users:
            by_side: dict[str, dict] = {}
            for s in servers:  # warm-up: fill each server's caches, not measured
                if users > 1:  # one user: the single-user round above was its warm-up
                    asyncio.run(one_round(s, users, args.pages, images, 300))
            recs: dict[str, list] = {s.label: [] for s in servers}
            since = time.time()
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                for s in servers:
                    s.start_profile(args.profile / f"{s.label}-{users}users.txt")
            for rep in range(args.repeats):
                order = servers if rep % 2 == 0 else list(reversed(servers))
                for s in order:
                    fresh = images[n * (1 + rep) : n * (2 + rep)]
                    recs[s.label] += asyncio.run(
                        one_round(s, users, args.pages, fresh, args.timeout)
                    )
            for s in servers:
                if args.profile:
                    s.stop_profile()
                    raw = args.profile / f"{s.label}-{users}users.txt"
                    shares = profile_summary(raw)
                    busy = sum(profile_samples(raw).values()) / PROFILE_HZ  # thread-seconds
                    print(
                        f"\n{s.label}, {users} user(s): {busy:.0f} s of server thread time "
                        "sampled (py-spy, active threads), by package:"
                    )
                    print("  " + ", ".join(f"{b} {100 * x:.0f}%" for b, x in shares.items()))
            for s in servers:
                summary = summarise(recs[s.label], s.script_times(since), args.pages)
                by_side[s.label] = {"summary": summary, "peak_rss_mib": s.peak_rss_mib()}
                _print(s.label, users, summary, by_side[s.label]["peak_rss_mib"])
            if len(servers) == 2:
                a, b = by_side["this"]["summary"], by_side[args.compare]["summary"]
                print(f"\nratio {args.compare} / this (> 1: this is faster), {users} user(s)")
                print(
                    f"{'page':<13} {'script':>7} {'view':>7} {'drawn':>7} {'cpu':>7} "
                    f"{'action':>7} {'drawn':>7}"
                )
                for name in args.pages:
                    cells = []
                    kinds = ("script", "view", "view drawn", "view cpu", "interaction")
                    for k in (*kinds, "interaction drawn"):
                        if k not in a[name] or k not in b[name]:
                            cells.append("      -")
                            continue
                        x, y = a[name][k]["median"], b[name][k]["median"]
                        cells.append(f"{y / x:>7.2f}" if x == x and y == y and x > 0 else "      -")
                    print(f"{name:<13} {' '.join(cells)}")
                    for k in MAP_KINDS:
                        if k in a[name] and k in b[name]:
                            x, y = a[name][k]["median"], b[name][k]["median"]
                            if x == x and y == y and x > 0:
                                print(f"  upload -> {k:<10}: {y / x:.2f}")
            results["users"][users] = by_side
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return results
    finally:
        for s in servers:
            s.stop()
        if worktree is not None:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                capture_output=True,
            )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
