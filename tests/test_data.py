"""Dataset layer: offline sources, geometry, limits and the missing-data error."""

from __future__ import annotations

import gzip
import socket
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import glow_repro.core.datasets as datasets
from glow_repro.core.config import ConfigError, DataConfig
from glow_repro.core.data import load_split
from glow_repro.errors import DataUnavailableError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an unsigned-byte IDX file (gzipped when the name ends in .gz)."""
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_mnist_split(folder: Path, prefix: str, n: int, seed: int, gz: bool = True) -> np.ndarray:
    """Random 28x28 images and labels as ``<prefix>-{images,labels}`` IDX files; returns images."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
    return images


@pytest.fixture
def mnist_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path / "root"
    train = write_mnist_split(root, "train", 12, seed=1)
    test = write_mnist_split(root, "t10k", 5, seed=2, gz=False)
    return root, train, test


@pytest.mark.skipif(not DEBIAN.is_dir(), reason=f"{DEBIAN} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_package(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="fashion-mnist")
    for split, n in (("train", 60000), ("test", 10000)):
        got = load_split(cfg, split, cache_dir=tmp_path)
        assert got.images.shape == (n, 1, 28, 28) and got.images.dtype == torch.uint8
        assert got.images.min() == 0 and got.images.max() == 255
        assert got.labels.dtype == torch.int64 and set(got.labels.unique().tolist()) == set(range(10))
        assert got.labels[0] == 9  # both splits start with an ankle boot
        assert got.name == f"fashion-mnist/{split}" and got.source == str(DEBIAN)


@pytest.mark.parametrize(
    "data",
    [
        {"dataset": "synthetic", "synthetic_size": 40},
        {"dataset": "digits"},
        {"dataset": "digits", "train_limit": 100},
        {"dataset": "digits", "train_limit": 5000},  # a limit beyond the split takes the split
        pytest.param(
            {"dataset": "fashion-mnist"}, marks=pytest.mark.skipif(not DEBIAN.is_dir(), reason=f"{DEBIAN} absent")
        ),
    ],
)
def test_train_images_without_reading_is_the_loaded_split(data, tmp_path: Path) -> None:
    """What an epoch covers, as known before loading (glow-repro plan), is what training loads."""
    cfg = DataConfig(**data)
    assert datasets.train_images(cfg) == len(load_split(cfg, "train", cache_dir=tmp_path).images)


def test_train_images_of_an_image_folder_is_unknown_until_read() -> None:
    assert datasets.train_images(DataConfig(dataset="imagefolder", root="folder", train_limit=10)) is None


def test_cached_arrays_are_not_shared_with_callers(mnist_root, tmp_path: Path) -> None:
    root, train, _ = mnist_root
    cfg = DataConfig(dataset="mnist", root=root)
    first = load_split(cfg, "train", cache_dir=tmp_path)
    first.images.zero_()
    again = load_split(cfg, "train", cache_dir=tmp_path)
    assert torch.equal(again.images[:, 0], torch.from_numpy(train))


def test_user_root_with_idx_files(mnist_root, tmp_path: Path) -> None:
    root, train, test = mnist_root
    cfg = DataConfig(dataset="mnist", root=root)
    got_train = load_split(cfg, "train", cache_dir=tmp_path / "empty")
    got_test = load_split(cfg, "test", cache_dir=tmp_path / "empty")
    assert torch.equal(got_train.images[:, 0], torch.from_numpy(train))  # gzipped files
    assert torch.equal(got_test.images[:, 0], torch.from_numpy(test))  # plain files
    assert got_train.labels.tolist() == [i % 10 for i in range(12)]
    assert got_train.source == str(root)


def test_root_wins_over_cache_and_debian_files(tmp_path: Path) -> None:
    root_images = write_mnist_split(tmp_path / "root", "t10k", 3, seed=5)
    write_mnist_split(tmp_path / "cache", "t10k", 3, seed=6)
    cfg = DataConfig(dataset="fashion-mnist", root=tmp_path / "root")
    got = load_split(cfg, "test", cache_dir=tmp_path / "cache")
    assert torch.equal(got.images[:, 0], torch.from_numpy(root_images))


def test_cache_from_environment_in_torchvision_layout(tmp_path: Path, monkeypatch) -> None:
    images = write_mnist_split(tmp_path / "env" / "MNIST" / "raw", "t10k", 4, seed=3, gz=False)
    monkeypatch.setenv("GLOW_REPRO_DATA", str(tmp_path / "env"))
    got = load_split(DataConfig(dataset="mnist"), "test")
    assert torch.equal(got.images[:, 0], torch.from_numpy(images))
    assert got.source == str(tmp_path / "env" / "MNIST" / "raw")


def test_pad_to_32_and_tile_to_3_channels(mnist_root, tmp_path: Path) -> None:
    root, train, _ = mnist_root
    cfg = DataConfig(dataset="mnist", root=root, image_size=32, channels=3)
    got = load_split(cfg, "train", cache_dir=tmp_path).images
    expected = torch.zeros(12, 3, 32, 32, dtype=torch.uint8)
    expected[:, :, 2:30, 2:30] = torch.from_numpy(train)[:, None]
    assert torch.equal(got, expected)


def test_odd_padding_puts_the_extra_row_bottom_right(mnist_root, tmp_path: Path) -> None:
    root, train, _ = mnist_root
    got = load_split(DataConfig(dataset="mnist", root=root, image_size=31), "train", cache_dir=tmp_path)
    expected = torch.zeros(12, 1, 31, 31, dtype=torch.uint8)
    expected[:, 0, 1:29, 1:29] = torch.from_numpy(train)
    assert torch.equal(got.images, expected)


def test_resize_keeps_a_constant_image_constant(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_idx(root / "t10k-images-idx3-ubyte", np.full((2, 28, 28), 200))
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(2))
    for size in (14, 40):
        cfg = DataConfig(dataset="mnist", root=root, image_size=size, resize="resize")
        got = load_split(cfg, "test", cache_dir=tmp_path).images
        assert got.shape == (2, 1, size, size) and bool((got == 200).all())


def test_padding_cannot_shrink(mnist_root, tmp_path: Path) -> None:
    root, _, _ = mnist_root
    with pytest.raises(ConfigError, match=r"data.image_size=16 .* data.resize=resize"):
        load_split(DataConfig(dataset="mnist", root=root, image_size=16), "train", cache_dir=tmp_path)


def test_limits_take_the_first_images(mnist_root, tmp_path: Path) -> None:
    root, train, test = mnist_root
    cfg = DataConfig(dataset="mnist", root=root, train_limit=7, test_limit=100)
    got_train = load_split(cfg, "train", cache_dir=tmp_path)
    assert torch.equal(got_train.images[:, 0], torch.from_numpy(train[:7]))
    assert got_train.labels.tolist() == list(range(7))
    assert len(load_split(cfg, "test", cache_dir=tmp_path).images) == len(test)  # a cap, not a pad


def test_corrupt_idx_file_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_mnist_split(root, "t10k", 3, seed=0, gz=False)
    images = root / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DataUnavailableError, match="t10k-images-idx3-ubyte"):
        load_split(DataConfig(dataset="mnist", root=root), "test", cache_dir=tmp_path)


def test_digits_from_sklearn() -> None:
    from sklearn.datasets import load_digits

    cfg = DataConfig(dataset="digits", image_size=16, channels=3)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert train.images.shape == (1438, 3, 16, 16) and test.images.shape == (359, 3, 16, 16)
    assert train.images.dtype == torch.uint8 and train.source == "sklearn"
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.cat([train.images, test.images]).unique().tolist()) <= allowed
    assert train.images.max() == 255
    counts = np.bincount(torch.cat([train.labels, test.labels]).numpy(), minlength=10)
    assert counts.tolist() == np.bincount(load_digits().target, minlength=10).tolist()
    assert torch.equal(load_split(cfg, "test").labels, test.labels)


def test_synthetic_is_deterministic_structured_and_split() -> None:
    cfg = DataConfig(dataset="synthetic")
    train = load_split(cfg, "train")
    datasets._synthetic.cache_clear()
    again, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert train.images.shape == (512, 1, 8, 8) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert not torch.equal(train.images, test.images)
    assert set(train.images.unique().tolist()) == {0, 85, 170, 255}
    assert abs(train.images.float().mean() - test.images.float().mean()) < 15  # same distribution
    # smooth: neighbouring pixels differ far less than pixels of unrelated images
    x = train.images.float()
    neighbours = (x[..., 1:] - x[..., :-1]).abs().mean()
    unrelated = (x - x.roll(1, dims=0)).abs().mean()
    assert neighbours < 0.5 * unrelated


def test_synthetic_follows_the_configured_shape() -> None:
    cfg = DataConfig(dataset="synthetic", synthetic_size=8, image_size=16, channels=3)
    images = load_split(cfg, "test").images
    assert images.shape == (8, 3, 16, 16)
    assert torch.equal(images[:, 0], images[:, 2])


def write_rgb(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path)


def test_imagefolder_centre_crop_and_luminance(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, size=(8, 12, 3), dtype=np.uint8)  # H=8, W=12
    write_rgb(tmp_path / "train" / "cats" / "a.png", wide)
    write_rgb(tmp_path / "train" / "dogs" / "b.png", wide[:, 2:10])
    write_rgb(tmp_path / "test" / "cats" / "c.png", wide[:, 2:10])
    cfg = DataConfig(dataset="imagefolder", root=tmp_path, image_size=8)
    got = load_split(cfg, "train")
    crop = torch.from_numpy(wide[:, 2:10]).permute(2, 0, 1)
    assert torch.equal(got.images, torch.stack([crop, crop]))
    assert got.labels.tolist() == [0, 1]
    gray = load_split(cfg.model_copy(update={"channels": 1}), "test").images
    r, g, b = (crop[c].int() for c in range(3))
    assert torch.equal(gray[0, 0], ((299 * r + 587 * g + 114 * b + 500) // 1000).to(torch.uint8))


def test_imagefolder_needs_a_root() -> None:
    with pytest.raises(ConfigError, match=r"data.root: required for dataset imagefolder"):
        load_split(DataConfig(dataset="imagefolder"), "train")


def test_missing_dataset_names_files_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    cfg = DataConfig(dataset="cifar10", root=root)
    with pytest.raises(DataUnavailableError) as err:
        load_split(cfg, "train", cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "cifar10/train" in message and "data_batch_1" in message and "test_batch" in message
    assert str(root / "cifar-10-batches-py") in message
    assert str(tmp_path / "cache" / "cifar-10-batches-py") in message
    assert "--set data.download=true" in message and "\n" not in message


def test_missing_fashion_mnist_suggests_the_debian_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataUnavailableError) as err:
        load_split(DataConfig(dataset="fashion-mnist"), "test", cache_dir=tmp_path)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte" in message and str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message


def go_offline(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def test_download_without_network_fails_fast_and_clearly(tmp_path: Path, monkeypatch) -> None:
    go_offline(monkeypatch)
    cfg = DataConfig(dataset="cifar10", root=tmp_path, download=True)
    start = time.monotonic()
    with pytest.raises(DataUnavailableError) as err:
        load_split(cfg, "test", cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "download failed: cannot reach www.cs.toronto.edu" in message
    assert "data_batch_1" in message and str(tmp_path / "cifar-10-batches-py") in message


def test_torchvision_download_errors_are_wrapped(tmp_path: Path, monkeypatch) -> None:
    """The host answers the probe but the transfer fails inside torchvision."""

    class Reachable:
        def close(self) -> None:
            pass

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Reachable())
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    cfg = DataConfig(dataset="mnist", download=True)
    with pytest.raises(DataUnavailableError, match=r"mnist/train: .*download from .* failed"):
        load_split(cfg, "train", cache_dir=tmp_path)
    assert socket.getdefaulttimeout() is None  # the download timeout does not leak


# --- labels -----------------------------------------------------------------------------------


def test_every_dataset_record_says_what_its_labels_are() -> None:
    from glow_repro.core.registry import DATASETS

    for name in DATASETS.names():
        record = DATASETS[name]
        assert record.labels in ("classes", "attributes"), name
        if name != "imagefolder":  # an image folder's classes are its folders
            assert len(record.label_names) >= 2 and len(set(record.label_names)) == len(record.label_names)
    assert DATASETS["fashion-mnist"].label_names[9] == "Ankle boot"
    assert DATASETS["cifar10"].label_names[3] == "cat"
    assert DATASETS["celeba"].labels == "attributes" and len(DATASETS["celeba"].label_names) == 40
    assert "Smiling" in DATASETS["celeba"].label_names and not DATASETS["celeba"].has_classes


def test_idx_labels_and_their_names(mnist_root, tmp_path: Path) -> None:
    root, _, _ = mnist_root
    got = load_split(DataConfig(dataset="mnist", root=root), "test", cache_dir=tmp_path)
    assert got.labels.tolist() == [0, 1, 2, 3, 4] and got.label_names == datasets.DIGIT_NAMES


def test_missing_label_file_is_the_missing_data_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_mnist_split(root, "t10k", 3, seed=0, gz=False)
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataUnavailableError) as err:
        load_split(DataConfig(dataset="mnist", root=root), "test", cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "data files not found" in message and "missing t10k-labels-idx1-ubyte[.gz]" in message
    assert "t10k-images" not in message.split("looked in")[1].split(";")[0]  # the images are there


def test_imagefolder_class_names_are_its_sorted_folders(tmp_path: Path) -> None:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    for split, folder in (("train", "dogs"), ("train", "cats"), ("test", "cats")):
        write_rgb(tmp_path / split / folder / "a.png", pixels)
    got = load_split(DataConfig(dataset="imagefolder", root=tmp_path, image_size=8), "test")
    assert got.label_names == ("cats", "dogs") and got.labels.tolist() == [0]


def test_synthetic_classes_are_blobs_and_stripes() -> None:
    got = load_split(DataConfig(dataset="synthetic"), "train")
    assert got.label_names == ("blob", "stripes") and set(got.labels.tolist()) == {0, 1}
    x = got.images.float()
    # a blob has one smooth peak; stripes repeat, so they change level more often along a row
    changes = (x[..., 1:] != x[..., :-1]).flatten(1).float().mean(1)
    assert changes[got.labels == 1].mean() > 1.5 * changes[got.labels == 0].mean()


def write_celeba(base: Path, attributes: np.ndarray) -> None:
    """A CelebA folder in torchvision's layout: ``len(attributes)`` test images, their attributes."""
    folder = base / "celeba"
    names = [f"{i + 1:06d}.png" for i in range(len(attributes))]
    for name in names:
        write_rgb(folder / "img_align_celeba" / name, np.full((10, 8, 3), 50, dtype=np.uint8))

    def rows(values: list) -> list[str]:
        return [f"{n} {' '.join(str(v) for v in row)}" for n, row in zip(names, values)]

    n = len(names)
    files = {
        "list_eval_partition.txt": rows([[2]] * n),
        "identity_CelebA.txt": rows([[1]] * n),
        "list_bbox_celeba.txt": [str(n), "image_id x_1 y_1 width height", *rows([[0, 0, 8, 8]] * n)],
        "list_landmarks_align_celeba.txt": [str(n), "a b", *rows([[0, 0]] * n)],
        "list_attr_celeba.txt": [str(n), " ".join(datasets.CELEBA_ATTRIBUTES), *rows(2 * attributes - 1)],
    }
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines) + "\n")


def test_celeba_gives_its_forty_attributes(tmp_path: Path, monkeypatch) -> None:
    from torchvision.datasets import CelebA

    monkeypatch.setattr(CelebA, "_check_integrity", lambda self: True)  # our files have no md5
    attributes = np.random.default_rng(0).integers(0, 2, size=(3, 40))
    write_celeba(tmp_path, attributes)
    got = load_split(DataConfig(dataset="celeba", root=tmp_path, image_size=8), "test")
    assert got.images.shape == (3, 3, 8, 8)
    assert got.labels.tolist() == attributes.tolist() and got.label_names == datasets.CELEBA_ATTRIBUTES
