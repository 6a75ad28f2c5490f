import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import csba.data as data
from csba.data import DataError, ImageLoadError, augment_batch, load_dataset, load_image


@pytest.fixture(scope="module")
def elpv32():
    return load_dataset("elpv", 32)


def test_elpv_real_images_counts_and_stratified_split(elpv32):
    b = elpv32
    assert b.classes == data.ELPV_CLASSES
    total = [sum(x) for x in zip(*b.describe()["counts"].values(), strict=True)]
    assert total == [1508, 295, 106, 715]
    assert len(b.test) == 656 and len(b.train) + len(b.val) + len(b.test) == 2624
    assert b.train.images.dtype == torch.uint8 and b.train.images.shape[1:] == (1, 32, 32)
    for c, n in enumerate(total):  # every split holds each class in proportion (+-1 image)
        assert abs(b.test.counts(4)[c] - 0.25 * n) <= 1
        assert abs(b.val.counts(4)[c] - 0.15 * 0.75 * n) <= 1
    idx = b.split_indices
    assert not set(idx["train"]) & set(idx["test"]) and not set(idx["val"]) & set(idx["test"])


def test_split_is_reproducible_and_seeded(elpv32):
    again = load_dataset("elpv", 32)
    assert again.split_indices == elpv32.split_indices
    assert torch.equal(again.test.images, elpv32.test.images)
    other = load_dataset("elpv", 32, split_seed=1)
    assert other.split_indices["test"] != elpv32.split_indices["test"]


def test_second_load_decodes_nothing(elpv32, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_decode_files", boom)
    b = load_dataset("elpv", 32)
    assert torch.equal(b.train.images, elpv32.train.images)


def test_elpv8_has_eight_classes(elpv32):
    b = load_dataset("elpv8", 32)
    assert len(b.classes) == 8 and b.classes[0] == "functional-mono"
    assert sum(len(s) for s in (b.train, b.val, b.test)) == 2624


def test_imagefolder_skips_stray_and_broken_files(tmp_path):
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "data")
    (root / "alpha" / "notes.txt").write_text("not an image")
    (root / "beta" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        b = load_dataset("imagefolder", 32, data_root=root, split_seed=3)
    assert b.classes == ["alpha", "beta", "gamma"]
    assert b.skipped == 1  # broken.png; notes.txt is not even considered
    assert sum(len(s) for s in (b.train, b.val, b.test)) == 60
    assert b.train.images.shape[1] == 3
    again = load_dataset("imagefolder", 32, data_root=root)  # from the cache: same count
    assert again.skipped == 1


@pytest.mark.parametrize(
    "name,kwargs,msg",
    [
        ("mnist", {}, "unknown dataset 'mnist'"),
        ("imagefolder", {}, "needs --data-root"),
        ("imagefolder", {"data_root": "/nonexistent/x"}, "does not exist"),
        ("cifar10-lt", {"data_root": "/tmp"}, "no CIFAR-10 batches"),
    ],
)
def test_dataset_errors_are_one_line(name, kwargs, msg):
    with pytest.raises(DataError, match=msg) as e:
        load_dataset(name, 32, **kwargs)
    assert "\n" not in str(e.value)


def test_cifar_lt_rule_known_answer():
    assert data.cifar_lt_counts(100, 5000) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """CIFAR-10 python batches with exactly the LT counts available (tiny pixel payload)."""
    root = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    root.mkdir()
    counts = data.cifar_lt_counts(100, 5000)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    np.random.default_rng(0).shuffle(labels)
    pix = (labels[:, None] * 25 % 256).astype(np.uint8) * np.ones((1, 3072), np.uint8)
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": pix[part], b"labels": labels[part].tolist()}, f)
    test_labels = np.arange(100) % 10
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": pix[:100], b"labels": test_labels.tolist()}, f)
    return root.parent


def test_cifar10_lt_counts_on_fixture(cifar_root):
    b = load_dataset("cifar10-lt", 16, data_root=cifar_root)
    train_val = np.add(b.train.counts(10), b.val.counts(10))
    assert train_val.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(b.test) == 100 and b.train.images.shape[1:] == (3, 16, 16)


def test_cifar_batch_with_code_is_refused(tmp_path):
    class Evil:  # exec, not print: Ray (tests/test_cluster.py) replaces builtins.print
        def __reduce__(self):
            return (exec, ("print('pwned')",))

    root = tmp_path / "c"
    root.mkdir()
    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    (root / "test_batch").write_bytes((root / "data_batch_1").read_bytes())
    with pytest.raises(DataError, match=r"refusing to load builtins\.exec"):
        load_dataset("cifar10-lt", 16, data_root=root)


def test_augment_batch_flips_and_rotations_are_seeded_permutations():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    a = augment_batch(x, torch.Generator().manual_seed(1), rot90=True)
    b = augment_batch(x, torch.Generator().manual_seed(1), rot90=True)
    assert torch.equal(a, b)
    for i in range(2):  # each output is a dihedral transform of its input
        variants = [torch.rot90(x[i], k, (1, 2)) for k in range(4)]
        variants += [v.flip(2) for v in variants]
        assert any(torch.equal(a[i], v) for v in variants)


def _png(mode, size=(8, 6), **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, **kw).save(buf, "PNG")
    return buf.getvalue()


def test_load_image_converts_to_rgb():
    assert load_image(_png("L", color=128)).mode == "RGB"
    im = load_image(_png("RGBA", color=(255, 0, 0, 0)))
    assert im.getpixel((0, 0)) == (0, 0, 0)  # transparent composited on black
    arr = np.full((4, 4), 65535, np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped


@pytest.mark.parametrize(
    "payload,msg",
    [(b"", "empty"), (b"hello world", "not an image"), (_png("L")[:40], "damaged or truncated")],
)
def test_load_image_errors(payload, msg):
    with pytest.raises(ImageLoadError, match=msg):
        load_image(payload)


def test_load_image_missing_path(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")
    assert issubclass(ImageLoadError, ValueError)


def test_elpv_from_labels_and_cache_alone(elpv32, tmp_path, monkeypatch):
    """A machine without the elpv-dataset package: labels.csv plus the decoded cache suffice."""
    src = data._elpv_root() / "labels.csv"
    (tmp_path / "labels.csv").write_bytes(src.read_bytes())
    monkeypatch.setenv("CSBA_ELPV_ROOT", str(tmp_path))
    b = load_dataset("elpv", 32)  # no images/ folder here: served from the cache
    assert torch.equal(b.test.images, elpv32.test.images)
    monkeypatch.setenv("CSBA_ELPV_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"holds no labels\.csv"):
        load_dataset("elpv", 32)
