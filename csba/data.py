"""Datasets (docs/design.md §3), the uint8 tensor cache, splits, augmentation and image loading.

Images are decoded and resized once, then cached as uint8 tensors (N, c, S, S) in a safetensors
file keyed by dataset, size and a fingerprint of the source, so a second run decodes nothing.
Grey datasets keep c = 1 in the cache and are repeated to 3 channels by :func:`normalize`.
Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from sklearn.model_selection import train_test_split
from torch import Tensor

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "DatasetBundle",
    "ImageLoadError",
    "ImageSet",
    "augment_batch",
    "cache_dir",
    "load_dataset",
    "load_image",
    "normalize",
    "preprocess_image",
    "with_normalisation",
]

DATASETS = ("elpv", "elpv8", "imagefolder", "cifar10-lt")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
ACCEPTED_FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "MPO"}

ELPV_CLASSES = ["functional", "possibly-defective", "likely-defective", "defective"]
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CACHE_VERSION = 1  # bump when the decode/resize path changes


class DataError(ValueError):
    """A dataset cannot be loaded: wrong name, missing root, unreadable layout."""


class ImageLoadError(ValueError):
    """An image cannot be read; the message says why in words a person understands."""


# ---- single images ---------------------------------------------------------------------------


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    return (getattr(source, "name", None) and f"'{source.name}'") or "the uploaded file"


def load_image(source: str | os.PathLike | bytes | IO[bytes]) -> Image.Image:
    """Read an image from a path, bytes or a binary file object and return it as RGB.

    Handles grey, 16-bit grey (scaled to 8 bits, not clipped), palette with transparency, RGBA
    (composited on black), CMYK, animated images (first frame) and EXIF orientation. Anything that
    cannot be read raises :class:`ImageLoadError` with a one-line explanation.
    """
    what = _describe(source)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise ImageLoadError(f"{what}: no such file")
            if path.is_dir():
                raise ImageLoadError(f"{what} is a folder, not an image file")
            data = path.read_bytes()
        elif hasattr(source, "read"):
            if hasattr(source, "seek"):
                source.seek(0)
            data = source.read()
        else:
            raise ImageLoadError(f"cannot read an image from a {type(source).__name__}")
    except OSError as e:
        raise ImageLoadError(f"{what}: cannot be read ({e.strerror or e})") from None
    if not data:
        raise ImageLoadError(f"{what} is empty (0 bytes)")
    with warnings.catch_warnings():
        # Past Pillow's pixel limit is an error here, never just a warning.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            fmt = im.format
            if fmt not in ACCEPTED_FORMATS:
                raise ImageLoadError(
                    f"{what} is a {fmt} image; accepted formats: PNG, JPEG, BMP, TIFF, WEBP, GIF"
                )
            im.seek(0)  # animated: first frame
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageLoadError(
                f"{what} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels)"
            ) from None
        except UnidentifiedImageError:
            if data.startswith(_IMAGE_MAGIC):
                raise ImageLoadError(f"{what} is a damaged or truncated image") from None
            raise ImageLoadError(f"{what} is not an image file we can read") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageLoadError(f"{what} is damaged or truncated ({e})") from None


# Leading bytes of the formats we accept: a file that starts like one but does not open is damaged.
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit int) grey: scale by the type's range rather than clipping at 255.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        grey = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def preprocess_image(im: Image.Image, image_size: int, channels: int) -> Tensor:
    """PIL image -> uint8 tensor (channels, S, S), the exact path the dataset cache uses."""
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.array(im, dtype=np.uint8)  # a writable copy
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


# torchvision's ImageNet statistics, for pretrained backbones (RGB, [0, 1] units)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def with_normalisation(bundle: DatasetBundle, mean: list[float], std: list[float]):
    """The bundle with other normalisation statistics (pretrained runs: ImageNet's; a stored
    run: those it was trained with). Grey images get 3 channels from 3 statistics."""
    import dataclasses

    return dataclasses.replace(bundle, mean=list(mean), std=list(std))


def normalize(images: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """uint8 (B, c, S, S) -> float32 (B, 3, S, S), scaled to [0, 1] then standardised.

    Grey inputs (c = 1) are repeated to 3 channels; mean/std are per cached channel, or three
    values (ImageNet's) that a grey image is broadcast against.
    """
    x = images.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x = (x - m) / s
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def augment_batch(images: Tensor, generator: torch.Generator, rot90: bool) -> Tensor:
    """Random horizontal/vertical flips and (for EL cells) 90-degree rotations, per sample.

    Works on a whole batch (B, c, S, S) of any dtype on any device; the generator lives on the CPU
    so the same seed gives the same augmentation on CPU and GPU.
    """
    b = images.shape[0]
    draws = torch.randint(0, 4, (b, 3), generator=generator)
    if images.device.type != "cpu":
        # One asynchronous copy from pinned memory: a copy from pageable memory waits for the
        # GPU to finish all queued work, which stalled every training step three times.
        draws = draws.pin_memory().to(images.device, non_blocking=True)
    hflip = (draws[:, 0] % 2).bool().view(b, 1, 1, 1)
    vflip = (draws[:, 1] % 2).bool().view(b, 1, 1, 1)
    x = torch.where(hflip, images.flip(3), images)
    x = torch.where(vflip, x.flip(2), x)
    if rot90 and x.shape[2] == x.shape[3]:
        k = draws[:, 2].view(b, 1, 1, 1)
        # Rotation by 1 and 3 quarter turns = transpose (+ flip); 2 turns is covered by the flips.
        xt = x.transpose(2, 3)
        x = torch.where(k == 1, xt.flip(3), torch.where(k == 3, xt.flip(2), x))
    return x


# ---- datasets --------------------------------------------------------------------------------


@dataclass
class ImageSet:
    """One split: uint8 images (N, c, S, S) and int64 labels (N,)."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class DatasetBundle:
    """A dataset decoded at one size, split into train/val/test, plus what rebuilds it."""

    name: str
    classes: list[str]
    image_size: int
    train: ImageSet
    val: ImageSet
    test: ImageSet
    split_seed: int
    fingerprint: str  # of the source files, so a changed source never reuses a stale cache
    mean: list[float]  # per cached channel, from the training split, in [0, 1] units
    std: list[float]
    rot90: bool  # 90-degree rotations are label-preserving (EL cells)
    skipped: int = 0  # unreadable files skipped while decoding
    data_root: str | None = None
    split_indices: dict[str, list[int]] = field(default_factory=dict)
    label_noise: dict | None = None  # csba.noise: training labels moved after the split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)

    def describe(self) -> dict:
        """JSON-friendly description stored in every run."""
        return {
            "name": self.name,
            "classes": self.classes,
            "image_size": self.image_size,
            "channels": self.channels,
            "split_seed": self.split_seed,
            "fingerprint": self.fingerprint,
            "mean": self.mean,
            "std": self.std,
            "rot90": self.rot90,
            "skipped": self.skipped,
            "counts": {s: self.split(s).counts(self.num_classes) for s in ("train", "val", "test")},
            **({"label_noise": self.label_noise} if self.label_noise else {}),
        }


def cache_dir() -> Path:
    """Where decoded datasets are cached: $CSBA_CACHE, else ~/.cache/csba."""
    return Path(os.environ.get("CSBA_CACHE", Path.home() / ".cache" / "csba"))


def _elpv_root() -> Path:
    # $CSBA_ELPV_ROOT: a folder with labels.csv (and images/, unless the decoded cache for the
    # size is present), for machines without the 91 MB package, e.g. the GPU machine.
    override = os.environ.get("CSBA_ELPV_ROOT")
    if override:
        root = Path(override).expanduser()
        if not (root / "labels.csv").is_file():
            raise DataError(f"CSBA_ELPV_ROOT '{root}' holds no labels.csv")
        return root
    try:
        import elpv_dataset
    except ImportError as e:  # pragma: no cover - it is a requirement
        raise DataError(
            "the elpv-dataset package is not installed (pip install elpv-dataset)"
        ) from e
    return Path(elpv_dataset.__file__).parent / "data"


def _file_fingerprint(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{extra}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _list_elpv(eight: bool) -> tuple[list[Path], np.ndarray, list[str], str]:
    root = _elpv_root()
    labels_csv = root / "labels.csv"
    rows = [line.split() for line in labels_csv.read_text().splitlines() if line.strip()]
    paths = [root / r[0] for r in rows]
    level = np.array([round(float(r[1]) * 3) for r in rows])  # 0, 1, 2, 3
    if eight:
        kind = np.array([0 if r[2] == "mono" else 1 for r in rows])
        labels = level * 2 + kind
        classes = [f"{c}-{t}" for c in ELPV_CLASSES for t in ("mono", "poly")]
    else:
        labels = level
        classes = list(ELPV_CLASSES)
    # labels.csv content + package version identify the source; stat of 2,624 files is cheap.
    h = hashlib.sha256(labels_csv.read_bytes()).hexdigest()[:16]
    return paths, labels, classes, h


def expected_classes(name: str, data_root: str | None = None) -> int | None:
    """How many classes dataset ``name`` has, known without decoding an image (an image
    folder: its class folders), so a head that cannot take them is refused before any data is
    loaded; None when that cannot be told cheaply (the real count is checked again later)."""
    fixed = {"elpv": len(ELPV_CLASSES), "elpv8": 2 * len(ELPV_CLASSES), "cifar10-lt": 10}
    if name in fixed:
        return fixed[name]
    if name == "imagefolder" and data_root and Path(data_root).is_dir():
        root = Path(data_root)
        return sum(1 for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return None


def _list_imagefolder(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    if not root.is_dir():
        raise DataError(f"imagefolder root '{root}' is not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"imagefolder root '{root}' needs at least two class folders, found {len(classes)}"
        )
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((root / c).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(p)
                labels.append(i)
    if not paths:
        raise DataError(f"imagefolder root '{root}' holds no image files")
    return paths, np.array(labels), classes


def _decode_files(paths: list[Path], size: int, channels: int) -> tuple[Tensor, np.ndarray]:
    """Decode + resize every file; returns uint8 (N, c, S, S) and a mask of files that worked."""
    out = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    ok = np.ones(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        try:
            out[i] = preprocess_image(load_image(p), size, channels)
        except ImageLoadError as e:
            ok[i] = False
            warnings.warn(f"skipping unreadable image: {e}", stacklevel=2)
    return out[torch.from_numpy(ok)], ok


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR-10 python batches without executing code: only numpy arrays may be rebuilt."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """-> images uint8 (N, 3, 32, 32), labels int64 (N,), from a python or binary batch."""
    if path.suffix == ".bin":
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        if raw.size % 3073:
            raise DataError(f"'{path}' is not a CIFAR-10 binary batch (size {raw.size})")
        raw = raw.reshape(-1, 3073)
        return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)
    try:
        with path.open("rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
        raise DataError(f"'{path}' is not a CIFAR-10 python batch ({e})") from None
    return data, labels


def cifar_lt_counts(imbalance_ratio: float = 100.0, n_max: int = 5000, classes: int = 10):
    """LDAM-DRW rule n_i = int(n_max * (1/ratio)^(i/(C-1)))."""
    return [int(n_max * (1.0 / imbalance_ratio) ** (i / (classes - 1))) for i in range(classes)]


def _find_cifar(root: Path) -> tuple[list[Path], Path]:
    for sub in (root, root / "cifar-10-batches-py", root / "cifar-10-batches-bin"):
        train = [sub / f"data_batch_{i}" for i in range(1, 6)]
        if all(p.is_file() for p in train) and (sub / "test_batch").is_file():
            return train, sub / "test_batch"
        train = [sub / f"data_batch_{i}.bin" for i in range(1, 6)]
        if all(p.is_file() for p in train) and (sub / "test_batch.bin").is_file():
            return train, sub / "test_batch.bin"
    raise DataError(
        f"no CIFAR-10 batches under '{root}': expected data_batch_1..5 and test_batch "
        "(python or .bin version); nothing is downloaded"
    )


def _resize_uint8(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size:
        return images
    x = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _stratified_split(labels: np.ndarray, seed: int, test: float, val: float):
    idx = np.arange(len(labels))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=labels, random_state=seed)
    train_idx, val_idx = train_test_split(
        rest, test_size=val, stratify=labels[rest], random_state=seed
    )
    return np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)


def _channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean/std in [0, 1] units of uint8 images (N, c, S, S), via histograms."""
    c = images.shape[1]
    hist = torch.zeros(c, 256, dtype=torch.float64)
    for chunk in images.split(256):  # bounded memory at any image size
        for ch in range(c):
            hist[ch] += torch.bincount(chunk[:, ch].reshape(-1).long(), minlength=256).double()
    v = torch.arange(256, dtype=torch.float64) / 255.0
    n = hist.sum(1)
    mean = (hist * v).sum(1) / n
    var = (hist * v**2).sum(1) / n - mean**2
    return mean.tolist(), var.clamp_min(1e-6).sqrt().tolist()


def _atomic_save(tensors: dict[str, Tensor], meta: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


def _cached(key: str, build) -> tuple[dict[str, Tensor], dict]:
    """Load cache entry ``key`` or build it with ``build() -> (tensors, meta)`` and store it."""
    path = cache_dir() / f"{key}.safetensors"
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["meta"])
            return load_file(str(path)), meta
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    tensors, meta = build()
    try:
        _atomic_save(tensors, meta, path)
    except OSError as e:
        warnings.warn(f"could not write dataset cache {path}: {e}", stacklevel=2)
    return tensors, meta


def load_dataset(
    name: str = "elpv",
    image_size: int = 128,
    *,
    data_root: str | os.PathLike | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.25,  # of all images (pinned)
    val_fraction: float = 0.15,  # of what remains after the test split (pinned)
    imbalance_ratio: float = 100.0,  # cifar10-lt only
) -> DatasetBundle:
    """Load a dataset decoded at ``image_size`` and split it (stratified, seeded).

    elpv / elpv8 come from the installed elpv-dataset package; imagefolder needs ``data_root`` (a
    folder of class folders); cifar10-lt needs ``data_root`` holding the CIFAR-10 batches.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if image_size < 16 or image_size > 1024:
        raise DataError(f"image size must be between 16 and 1024 pixels, got {image_size}")
    if name in ("imagefolder", "cifar10-lt"):
        if data_root is None:
            raise DataError(f"dataset {name!r} needs --data-root (a local folder)")
        root = Path(data_root).expanduser().resolve()
        if not root.exists():
            raise DataError(f"data root '{root}' does not exist")
    skipped = 0
    if name in ("elpv", "elpv8"):
        paths, labels, classes, source_hash = _list_elpv(name == "elpv8")
        fingerprint = hashlib.sha256(f"{source_hash}:{len(paths)}".encode()).hexdigest()[:16]
        key = f"elpv-{image_size}px-{fingerprint}"  # elpv and elpv8 share decoded pixels

        def build():
            images, ok = _decode_files(paths, image_size, 1)
            return {"images": images}, {"ok": ok.tolist()}

        tensors, meta = _cached(key, build)
        ok = np.array(meta["ok"], dtype=bool)
        images, labels, skipped = tensors["images"], labels[ok], int((~ok).sum())
        rot90 = True
        train_idx, val_idx, test_idx = _stratified_split(
            labels, split_seed, test_fraction, val_fraction
        )
    elif name == "imagefolder":
        paths, labels, classes = _list_imagefolder(root)
        fingerprint = _file_fingerprint(paths, extra=str(root))
        key = f"imagefolder-{image_size}px-{fingerprint}"

        def build():
            images, ok = _decode_files(paths, image_size, 3)
            return {"images": images}, {"ok": ok.tolist()}

        tensors, meta = _cached(key, build)
        ok = np.array(meta["ok"], dtype=bool)
        images, labels, skipped = tensors["images"], labels[ok], int((~ok).sum())
        if len(labels) == 0:
            raise DataError(f"no readable images under '{root}'")
        rot90 = False
        train_idx, val_idx, test_idx = _stratified_split(
            labels, split_seed, test_fraction, val_fraction
        )
    else:  # cifar10-lt
        train_files, test_file = _find_cifar(root)
        classes = list(CIFAR10_CLASSES)
        fingerprint = _file_fingerprint([*train_files, test_file], extra=str(imbalance_ratio))
        key = f"cifar10-{image_size}px-{fingerprint}"

        def build():
            parts = [_read_cifar_batch(p) for p in train_files]
            tr_x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
            tr_y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
            te_x, te_y = _read_cifar_batch(test_file)
            return {
                "train_images": _resize_uint8(tr_x, image_size),
                "train_labels": tr_y,
                "test_images": _resize_uint8(torch.from_numpy(te_x.copy()), image_size),
                "test_labels": torch.from_numpy(te_y.copy()),
            }, {}

        tensors, _ = _cached(key, build)
        full_y = tensors["train_labels"].numpy()
        rng = np.random.default_rng(split_seed)
        n_max = int(np.bincount(full_y, minlength=10).max())
        counts = cifar_lt_counts(imbalance_ratio, n_max)
        lt = np.concatenate(
            [np.sort(rng.permutation(np.flatnonzero(full_y == c))[: counts[c]]) for c in range(10)]
        )
        tr, va = train_test_split(
            lt, test_size=val_fraction, stratify=full_y[lt], random_state=split_seed
        )
        n_train = len(full_y)
        images = torch.cat([tensors["train_images"], tensors["test_images"]])
        labels = np.concatenate([full_y, tensors["test_labels"].numpy()])
        train_idx, val_idx = np.sort(tr), np.sort(va)
        test_idx = np.arange(n_train, len(labels))
        rot90 = False

    y = torch.from_numpy(labels.astype(np.int64))

    def subset(idx: np.ndarray) -> ImageSet:
        t = torch.from_numpy(idx)
        return ImageSet(images[t].contiguous(), y[t].contiguous())

    train = subset(train_idx)
    mean, std = _channel_stats(train.images)
    return DatasetBundle(
        name=name,
        classes=classes,
        image_size=image_size,
        train=train,
        val=subset(val_idx),
        test=subset(test_idx),
        split_seed=split_seed,
        fingerprint=fingerprint,
        mean=mean,
        std=std,
        rot90=rot90,
        skipped=skipped,
        data_root=None if data_root is None else str(Path(data_root).expanduser().resolve()),
        split_indices={
            "train": train_idx.tolist(),
            "val": val_idx.tolist(),
            "test": test_idx.tolist(),
        },
    )
