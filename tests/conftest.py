"""Shared fixtures: a private dataset cache, a tiny image-folder dataset and tiny trained runs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test session decodes into its own cache, never the user's."""
    old = os.environ.get("CSBA_CACHE")
    os.environ["CSBA_CACHE"] = str(tmp_path_factory.mktemp("csba-cache"))
    yield
    if old is None:
        os.environ.pop("CSBA_CACHE", None)
    else:
        os.environ["CSBA_CACHE"] = old


def make_image_folder(root: Path, per_class=(30, 20, 10), size: int = 32, seed: int = 0) -> Path:
    """Class folders of PNGs with a learnable class-dependent pattern (imbalanced counts)."""
    rng = np.random.default_rng(seed)
    names = ["alpha", "beta", "gamma", "delta"][: len(per_class)]
    for c, (name, n) in enumerate(zip(names, per_class, strict=True)):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            band = slice(c * size // len(per_class), (c + 1) * size // len(per_class))
            img[band, :, :] += 150  # horizontal band position encodes the class
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    root = make_image_folder(tmp_path_factory.mktemp("tiny") / "data")
    (root / "alpha" / "notes.txt").write_text("not an image")
    (root / "beta" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_folder) -> dict[str, Path]:
    """One-epoch runs of the paper's five variants on the tiny dataset (32 px), keyed by
    variant (the long-tail methods and other backbones: tiny_extra_runs)."""
    from csba.models import PAPER_VARIANTS
    from csba.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs")
    runs = {}
    for variant in PAPER_VARIANTS:
        meta = train(
            TrainConfig(
                dataset="imagefolder",
                data_root=str(tiny_folder),
                variant=variant,
                image_size=32,
                epochs=1,
                batch_size=16,
                out=str(out),
            )
        )
        runs[variant] = Path(meta["run_dir"])
    return runs


@pytest.fixture(scope="session")
def tiny_extra_runs(tmp_path_factory, tiny_folder) -> dict[str, Path]:
    """One-epoch runs of the long-tail methods (trifire), of baseline and csba on resnet18 and
    of csba on timm's mobilenetv3_small_050, seed 0, on the tiny dataset (32 px), keyed by
    folder name; each diagnosed."""
    from csba.diagnostics.run import diagnose_run
    from csba.models import PAPER_VARIANTS, list_models
    from csba.train import TrainConfig, train

    out = tmp_path_factory.mktemp("extra")
    todo = [(v, "trifire") for v in list_models() if v not in PAPER_VARIANTS]
    todo += [("baseline", "trifire"), ("baseline", "resnet18"), ("csba", "resnet18")]
    todo += [("csba", "timm:mobilenetv3_small_050")]  # a timm backbone through every page
    runs = {}
    for variant, backbone in todo:
        meta = train(
            TrainConfig(
                dataset="imagefolder",
                data_root=str(tiny_folder),
                variant=variant,
                backbone=backbone,
                image_size=32,
                epochs=1,
                batch_size=16,
                crt_epochs=1,
                out=str(out),
            )
        )
        diagnose_run(meta["run_dir"], per_class=4, device="cpu")
        runs[Path(meta["run_dir"]).name] = Path(meta["run_dir"])
    return runs


def settle_attributions(at, timeout_s: float = 120.0) -> None:
    """Rerun an AppTest on the Attributions page until no run's computation is pending (its
    first answer waits only for the first run's maps; the others come on later reruns)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        pending = [i.value for i in at.info if "computing..." in i.value or "queued" in i.value]
        pending += [c.value for c in at.caption if "computations for this image done" in c.value]
        if not pending or time.monotonic() > deadline:
            return
        time.sleep(0.3)
        at.run()


@contextlib.contextmanager
def streamlit_server(root: Path, data_root: Path, log_path: Path, **env):
    """``streamlit run app.py`` on a free port of 127.0.0.1 over the runs under ``root``; yields
    ``{"url", "port", "pid"}`` once its health check answers, stops it afterwards. ``env``:
    extra environment variables (strings)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full_env = {
        **os.environ,
        "CSBA_RUNS_ROOT": str(root),
        "CSBA_DATA_ROOT": str(data_root),
        "PYTHONPATH": str(REPO),
        **env,
    }
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    cmd += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    cmd += ["--browser.gatherUsageStats", "false"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"streamlit did not start:\n{log_path.read_text()}")
                time.sleep(0.25)
            yield {"url": url, "port": port, "pid": proc.pid}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def open_page(path: str, timeout: float = 180):
    """An AppTest of app.py switched to the page file ``path`` (no exception raised)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout)
    at.run()
    at.switch_page(path)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at
