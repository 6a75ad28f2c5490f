"""Run folders on disk (docs/design.md §5): ``model.safetensors`` + ``run.json``.

Never a pickle. Writes are atomic (temporary file in the same folder, then ``os.replace``); the
weights are written first and ``run.json`` last, and run.json records the SHA-256 of the weights, so
a process killed at any moment leaves either the previous complete run or one that is refused with
a clear error, never one that loads wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .models import create_model, parse_variant

__all__ = [
    "SCHEMA_VERSION",
    "Run",
    "RunError",
    "RunInfo",
    "atomic_write_bytes",
    "atomic_write_json",
    "cleanup_stale_temp",
    "config_run_dir",
    "list_runs",
    "load_run",
    "read_run_json",
    "run_dir_for",
    "save_run",
    "write_run_files",
]

SCHEMA_VERSION = 1
WEIGHTS = "model.safetensors"
META = "run.json"
REQUIRED_FIELDS = ("schema_version", "variant", "num_classes", "classes", "config", "dataset")
DEFAULT_IMAGE_SIZE = 128


class RunError(ValueError):
    """A run folder cannot be used; the message names the file and says why, on one line."""


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean_nan(o):
    """JSON has no NaN: store None instead (readers treat None as missing)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean_nan(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_nan(v) for v in o]
    return o


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")


def atomic_write_json(path: Path, data: dict) -> None:
    """Write JSON to ``path`` atomically (NaN stored as null)."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with tmp.open("w") as f:
            json.dump(_clean_nan(data), f, indent=1, default=_json_default, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync,
    ``os.replace``)."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_run_files(run_dir: str | os.PathLike, files: dict[str, bytes]) -> Path:
    """Write a run folder's files (relative path -> bytes, e.g. returned by a Ray worker)
    atomically, each with :func:`atomic_write_bytes`; run.json goes last, so the folder holds
    either its previous run or the new one whole, as :func:`save_run` guarantees."""
    run_dir = Path(run_dir)
    root = run_dir.resolve()
    for name in files:
        dest = (run_dir / name).resolve()
        if root not in dest.parents:
            raise RunError(f"'{name}' is not a path inside the run folder '{run_dir}'")
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: (n == META, n)):
        dest = run_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, files[name])
    return run_dir


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cleanup_stale_temp(run_dir: Path, older_than_s: float = 0.0) -> int:
    """Remove temporary files left by a killed writer; returns how many were removed."""
    n = 0
    now = time.time()
    for p in Path(run_dir).glob(".*.tmp"):
        try:
            if now - p.stat().st_mtime >= older_than_s:
                p.unlink()
                n += 1
        except OSError:
            pass
    return n


def run_dir_for(
    root: str | os.PathLike,
    dataset: str,
    variant: str,
    seed: int,
    image_size: int,
    backbone: str = "trifire",
    pretrained: str | None = None,
    label_noise: float = 0.0,
    label_noise_seed: int = 0,
) -> Path:
    """``root/<dataset>/<variant>-s<seed>``; sizes other than 128 px get ``<dataset>-<S>px``,
    backbones other than trifire ``<variant>-<backbone>-s<seed>``, pretrained ones a
    ``-imagenet`` (``pretrained="imagenet"``) or ``-pretrained`` (a local file) after the
    backbone, moved labels ``-noise<R>n<S>``, so that no two kinds of run share a folder."""
    key = dataset if image_size == DEFAULT_IMAGE_SIZE else f"{dataset}-{image_size}px"
    # timm:NAME -> timm-NAME (no colon in a folder name; timm's names are [a-z0-9_.])
    name = variant if backbone == "trifire" else f"{variant}-{backbone.replace(':', '-')}"
    if pretrained:
        name += "-imagenet" if pretrained == "imagenet" else "-pretrained"
    if label_noise:
        name += f"-noise{label_noise:g}n{label_noise_seed}"
    return Path(root) / key / f"{name}-s{seed}"


def config_run_dir(cfg, seed: int | None = None) -> Path:
    """The run folder of a :class:`csba.train.TrainConfig`: its ``run_dir`` or
    :func:`run_dir_for` of its fields (``seed`` overrides the config's)."""
    if cfg.run_dir and seed is None:
        return Path(cfg.run_dir)
    return run_dir_for(
        cfg.out,
        cfg.dataset,
        cfg.variant,
        cfg.seed if seed is None else seed,
        cfg.image_size,
        getattr(cfg, "backbone", "trifire"),
        getattr(cfg, "pretrained", None),
        getattr(cfg, "label_noise", 0.0),
        getattr(cfg, "label_noise_seed", 0),
    )


def save_run(
    run_dir: str | os.PathLike, model: nn.Module, meta: dict, dtype: torch.dtype = torch.float32
) -> Path:
    """Store weights and metadata atomically; returns the run folder.

    Floating-point tensors are stored in ``dtype`` (training stores float16 by default, after
    rounding the model so that its metrics are those of the stored weights); :func:`load_run`
    reads either back into the float32 model.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cleanup_stale_temp(run_dir)
    weights = run_dir / WEIGHTS
    tmp = _tmp_path(weights)
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().to("cpu").contiguous()
        for k, v in model.state_dict().items()
    }
    try:
        save_file(state, str(tmp), metadata={"format": "csba", "variant": meta["variant"]})
        digest = _sha256(tmp)
        os.replace(tmp, weights)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {**meta, "schema_version": SCHEMA_VERSION, "weights_sha256": digest}
    atomic_write_json(run_dir / META, meta)
    return run_dir


def update_run_json(run_dir: str | os.PathLike, **fields) -> dict:
    """Merge ``fields`` into a run's run.json atomically (used to add diagnostics)."""
    run_dir = Path(run_dir)
    meta = read_run_json(run_dir)
    meta.update(fields)
    atomic_write_json(run_dir / META, meta)
    return meta


def read_run_json(run_dir: str | os.PathLike) -> dict:
    """Parse and validate a run's run.json, or raise :class:`RunError`."""
    run_dir = Path(run_dir)
    path = run_dir / META
    if not run_dir.exists():
        raise RunError(f"'{run_dir}': no such run folder")
    if not run_dir.is_dir():
        raise RunError(f"'{run_dir}' is not a folder (a run is a folder holding {META})")
    if not path.is_file():
        raise RunError(f"'{run_dir}' is not a run folder: {META} is missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"'{path}' is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise RunError(f"'{path}' does not hold a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise RunError(f"'{path}' lacks field(s): {', '.join(missing)}")
    version = meta["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RunError(
            f"'{path}' has schema version {version}; this csba reads up to {SCHEMA_VERSION} "
            "(upgrade csba)"
        )
    try:
        parse_variant(str(meta["variant"]))  # a preset or HEAD+METHOD
    except ValueError:
        raise RunError(f"'{path}': unknown variant {meta['variant']!r}") from None
    if len(meta["classes"]) != meta["num_classes"]:
        raise RunError(
            f"'{path}': {len(meta['classes'])} class names but num_classes={meta['num_classes']}"
        )
    return meta


@dataclass
class Run:
    """A loaded run: its folder, metadata and the rebuilt model (eval mode, on the CPU)."""

    path: Path
    meta: dict
    model: nn.Module

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def variant(self) -> str:
        return self.meta["variant"]

    @property
    def seed(self) -> int:
        return int(self.meta["config"].get("seed", 0))

    @property
    def dataset(self) -> dict:
        return self.meta["dataset"]

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def load_run(run_dir: str | os.PathLike, *, verify: bool = True) -> Run:
    """Rebuild a run's model from run.json alone and load its weights (safetensors only).

    Raises :class:`RunError` with a one-line message naming the file for anything wrong: missing
    files, bad JSON, unknown variant, newer schema, truncated or altered weights, or weights that do
    not fit the recorded classes.
    """
    run_dir = Path(run_dir)
    meta = read_run_json(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        # a shipped experiment record (benchmarks/ship_records.py) is run.json alone on purpose
        raise RunError(
            f"'{weights}' is missing: a run.json without weights (a shipped run record) serves "
            "the tables but cannot be evaluated, diagnosed or explained; retrain it "
            "(docs/experiments.md)"
        )
    if verify and meta.get("weights_sha256") and _sha256(weights) != meta["weights_sha256"]:
        raise RunError(f"'{weights}' does not match the checksum in {META} (altered or truncated)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"'{weights}' is not a readable safetensors file ({e})") from None
    try:
        model = create_model(meta["variant"], int(meta["num_classes"]), **meta.get("model", {}))
    except (TypeError, ValueError) as e:
        raise RunError(f"'{run_dir / META}': cannot rebuild the model ({e})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        detail = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(bad_shape)} wrong-shaped "
            f"tensors"
        )
        raise RunError(
            f"'{weights}' does not fit a {meta['variant']} model with "
            f"{meta['num_classes']} classes ({detail})"
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    return Run(run_dir, meta, model)


@dataclass
class RunInfo:
    """A run found on disk: its folder and metadata, or the error that makes it unusable."""

    path: Path
    meta: dict | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def list_runs(root: str | os.PathLike = "checkpoints") -> list[RunInfo]:
    """Every run folder under ``root`` (any depth holding run.json), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for meta_path in sorted(root.rglob(META)):
        run_dir = meta_path.parent
        try:
            found.append(RunInfo(run_dir, read_run_json(run_dir)))
        except RunError as e:
            found.append(RunInfo(run_dir, None, str(e)))
    return found


def torch_state_equal(a: nn.Module, b: nn.Module) -> bool:
    """True when two models hold identical tensors (test helper)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
