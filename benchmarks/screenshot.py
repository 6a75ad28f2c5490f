"""Regenerate docs/screenshot.png: the dashboard's Gradient conflict page on the shipped runs.

    python benchmarks/screenshot.py [--page conflict] [--out docs/screenshot.png]

Starts ``streamlit run app.py`` headless on a free local port, opens the page in headless
Chromium (Debian's /usr/bin/chromium through playwright), waits for the figures to render,
writes the PNG and stops the server. The test suite never runs this (it must leave the working
tree clean); run it by hand after a change to a page.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the dashboard did not answer at {url} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--page", default="conflict", help="URL path of the page (default %(default)s)")
    p.add_argument("--out", default=str(REPO / "docs" / "screenshot.png"), help="PNG to write")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1000)
    args = p.parse_args(argv)

    from playwright.sync_api import sync_playwright

    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    cmd += ["--server.port", str(port), "--browser.gatherUsageStats", "false"]
    server = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/_stcore/health")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(f"{base}/{args.page}", wait_until="networkidle")
            page.wait_for_selector(".js-plotly-plot", timeout=120_000)
            # let the app finish its run (no spinner, no "Running..." badge) and plotly draw
            page.wait_for_function(
                "!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000
            )
            time.sleep(3)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=False)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
