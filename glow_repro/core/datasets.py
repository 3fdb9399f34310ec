"""The datasets a config may name, one :class:`Dataset` record each, registered by name.

A record holds everything that differs between datasets: the native shape (which the config
reads, so this module imports neither torch nor torchvision at module level), how the images
are made or where the files are and how to read them, and the names the published tables use.
:mod:`glow_repro.core.data` does the rest for every dataset alike: finding files, downloading,
caching, resizing, tiling and the error messages. A new dataset is one ``DATASETS.register``
call here (with its reader if no existing one fits).

MNIST-style IDX files are read with numpy (gzipped or not, flat or in torchvision's
``<Name>/raw`` layout); the other datasets are read by their torchvision classes. CelebA and
image folders are centre-cropped to a square and resized to ``image_size`` while decoding.

Labels come with the images: class indices ``[N]`` for class datasets (their names on the
record, or the class folders of an image folder), CelebA's 40 binary attributes ``[N, 40]``
(torchvision's ``target_type="attr"``, read from ``list_attr_celeba.txt``, a file the split
already needs, so a missing label file gets the missing-images error).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from glow_repro.core.config import DataConfig
from glow_repro.core.registry import DATASETS

if TYPE_CHECKING:
    import torchvision

SplitName = Literal["train", "test"]
Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images [N, C, H, W], int64 labels [N] or [N, A]
LabelKind = Literal["classes", "attributes"]

#: Where the Debian package ``dataset-fashion-mnist`` installs its IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_SYNTHETIC_SEEDS = {"train": 0, "test": 1}
_SYNTHETIC_LEVELS = 4  # gray levels 0, 85, 170, 255

DIGIT_NAMES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SYNTHETIC_NAMES = ("blob", "stripes")
#: The columns of CelebA's ``list_attr_celeba.txt``, in file order.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)


@dataclass(frozen=True)
class FileSource:
    """Where one file-based dataset's files sit under a base directory, and how to read them."""

    layouts: tuple[str, ...]  # directories under a base that may hold the files
    names: Callable[[SplitName], tuple[str, ...]]  # files (or folders) one split needs
    read: Callable[[Path, tuple[Path, ...], SplitName, int | None, tuple[int, int]], Arrays]
    fetch: Callable[[Path, SplitName], object] | None  # torchvision download into a base
    url: str | None  # where ``fetch`` downloads from
    gz_ok: bool = False  # accept ``name.gz`` for ``name``
    decodes: bool = False  # reads image files one by one (limit and size shape the cache)
    needs_root: bool = False  # only ``data.root`` can hold it
    fallbacks: tuple[Path, ...] = ()  # system directories tried after the cache
    get_hint: str = ""  # another way to get the files


@dataclass(frozen=True)
class Dataset:
    """One dataset: made in memory (``generate``) or read from files (``files``)."""

    shape: tuple[int, int, int]  # native (channels, height, width) before resizing or tiling
    title: str  # how tables and reports name it, e.g. "CIFAR-10"
    files: Callable[[], FileSource] | None = None  # where its files are and how to read them
    generate: Callable[[DataConfig, SplitName], Arrays] | None = None  # images made in memory
    origin: str = ""  # the ``source`` of a generated dataset's images
    test_size: int | None = None  # images in the full test split, to tell a subset from it
    train_size: int | Callable[[DataConfig], int] | None = None  # images in the training split; None: unknown unread
    labels: LabelKind | None = None  # what its labels are; None: it has none
    label_names: tuple[str, ...] = ()  # class or attribute names; () where the files name them

    def __post_init__(self) -> None:
        if (self.files is None) == (self.generate is None):
            raise ValueError("a dataset is read from files or generated: give files or generate")

    @property
    def has_classes(self) -> bool:
        """Whether each image has one class index (what class conditioning needs)."""
        return self.labels == "classes"


def train_images(cfg: DataConfig) -> int | None:
    """Images an epoch of ``cfg`` passes over: the training split, or its first
    ``data.train_limit``; None when only reading the files can tell (an image folder)."""
    size = DATASETS[cfg.dataset].train_size
    size = size(cfg) if callable(size) else size
    if size is None:
        return None
    return min(size, cfg.train_limit) if cfg.train_limit else size


def label_names(cfg: DataConfig) -> tuple[str, ...]:
    """The class (or attribute) names of ``cfg.dataset``, index order; an image folder's are
    its sorted class folders under ``data.root/train`` (torchvision ``ImageFolder``'s order)."""
    dataset = DATASETS[cfg.dataset]
    if dataset.label_names or cfg.root is None or dataset.labels is None:
        return dataset.label_names
    train = Path(cfg.root) / "train"
    return tuple(sorted(entry.name for entry in train.iterdir() if entry.is_dir())) if train.is_dir() else ()


def frozen(images: np.ndarray, labels: np.ndarray) -> Arrays:
    """Mark cached arrays read-only, so no caller can change them for the next one."""
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


# --- generated and bundled datasets -----------------------------------------------------------


@lru_cache(maxsize=4)
def _synthetic(n: int, size: tuple[int, int], split: SplitName) -> Arrays:
    """Smooth blobs (label 0) and stripes (label 1) on ``_SYNTHETIC_LEVELS`` gray levels.

    Drawn directly at ``size``; train and test use different fixed seeds of one distribution.
    """
    import torch

    gen = torch.Generator().manual_seed(_SYNTHETIC_SEEDS[split])
    kind = torch.randint(0, 2, (n,), generator=gen)
    u = torch.rand(n, 6, 1, 1, generator=gen, dtype=torch.float64)
    ys = torch.linspace(0, 1, size[0], dtype=torch.float64).view(1, -1, 1)
    xs = torch.linspace(0, 1, size[1], dtype=torch.float64).view(1, 1, -1)
    cx, cy, sigma = 0.2 + 0.6 * u[:, 0], 0.2 + 0.6 * u[:, 1], 0.15 + 0.15 * u[:, 2]
    blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    theta, freq, phase = torch.pi * u[:, 3], 0.5 + 1.0 * u[:, 4], 2 * torch.pi * u[:, 5]
    along = xs * torch.cos(theta) + ys * torch.sin(theta)
    stripes = 0.5 + 0.5 * torch.cos(2 * torch.pi * freq * along + phase)
    image = torch.where(kind.view(-1, 1, 1) == 1, stripes, blob)
    step = 255 // (_SYNTHETIC_LEVELS - 1)
    levels = (image * (_SYNTHETIC_LEVELS - 1)).round() * step
    return frozen(levels.to(torch.uint8).unsqueeze(1).numpy(), kind.numpy())


#: Images in scikit-learn's digits (``load_digits``), both splits together.
DIGITS_IMAGES = 1797


@lru_cache(maxsize=1)
def _digits_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    return images, digits.target.astype(np.int64), order


def _digits(split: SplitName) -> Arrays:
    """scikit-learn's 8x8 digits (values 0..16 scaled to 0..255); a fixed 80/20 split (seed 0)."""
    images, labels, order = _digits_all()
    n_test = DIGITS_IMAGES // 5
    chosen = order[:-n_test] if split == "train" else order[-n_test:]
    return images[chosen], labels[chosen]


# --- readers ----------------------------------------------------------------------------------


def _idx_array(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array (the MNIST file format), gzipped or not."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path.name} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise ValueError(f"{path.name} holds {len(raw) - header} bytes, its header says {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx(
    base: Path, paths: tuple[Path, ...], split: SplitName, limit: int | None, size: tuple[int, int]
) -> Arrays:
    images, labels = (_idx_array(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{paths[0].name} {images.shape} does not match {paths[1].name} {labels.shape}")
    return images[:, None], labels


def _read_cifar10(
    base: Path, paths: tuple[Path, ...], split: SplitName, limit: int | None, size: tuple[int, int]
) -> Arrays:
    from torchvision.datasets import CIFAR10

    data = CIFAR10(str(base), train=split == "train", download=False)
    return data.data.transpose(0, 3, 1, 2), np.asarray(data.targets)


def _read_svhn(
    base: Path, paths: tuple[Path, ...], split: SplitName, limit: int | None, size: tuple[int, int]
) -> Arrays:
    from torchvision.datasets import SVHN

    data = SVHN(str(base), split=split, download=False)
    return data.data, data.labels


def _read_celeba(
    base: Path, paths: tuple[Path, ...], split: SplitName, limit: int | None, size: tuple[int, int]
) -> Arrays:
    from torchvision.datasets import CelebA

    data = CelebA(str(base), split=split, target_type="attr", download=False)
    return _decode(data, limit, size, f"celeba/{split}")


def _read_imagefolder(
    base: Path, paths: tuple[Path, ...], split: SplitName, limit: int | None, size: tuple[int, int]
) -> Arrays:
    from torchvision.datasets import ImageFolder

    return _decode(ImageFolder(str(paths[0])), limit, size, f"imagefolder/{split}")


def _decode(data: torchvision.datasets.VisionDataset, limit: int | None, size: tuple[int, int], what: str) -> Arrays:
    """Centre-crop each image to a square and resize it to ``size``; the targets as they come
    (a class index, or a vector of binary attributes)."""
    n = len(data) if limit is None else min(limit, len(data))
    images = np.empty((n, 3, *size), dtype=np.uint8)
    labels = []
    for i in tqdm(range(n), desc=f"decoding {what}", unit="img", disable=None):
        image, target = data[i]
        fitted = ImageOps.fit(image.convert("RGB"), (size[1], size[0]), Image.Resampling.BILINEAR)
        images[i] = np.asarray(fitted).transpose(2, 0, 1)
        labels.append(np.asarray(target, dtype=np.int64))
    return images, np.stack(labels) if labels else np.zeros(0, dtype=np.int64)


def _idx_names(split: SplitName) -> tuple[str, ...]:
    prefix = "train" if split == "train" else "t10k"
    return (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")


def _mnist_like(cls: type[torchvision.datasets.MNIST], **extra: object) -> FileSource:
    return FileSource(
        layouts=("", f"{cls.__name__}/raw"),
        names=_idx_names,
        read=_read_idx,
        fetch=lambda base, split: cls(str(base), train=split == "train", download=True),
        url=cls.mirrors[0],
        gz_ok=True,
        **extra,  # type: ignore[arg-type]
    )


# --- file sources (built on use: they read torchvision's file lists) --------------------------


def _mnist_files() -> FileSource:
    from torchvision.datasets import MNIST

    return _mnist_like(MNIST)


def _fashion_mnist_files() -> FileSource:
    from torchvision.datasets import FashionMNIST

    return _mnist_like(
        FashionMNIST,
        fallbacks=(DEBIAN_FASHION_MNIST,),
        get_hint="`sudo apt-get install dataset-fashion-mnist`",
    )


def _cifar10_files() -> FileSource:
    from torchvision.datasets import CIFAR10

    return FileSource(
        layouts=(CIFAR10.base_folder,),
        names=lambda split: (*(name for name, _ in CIFAR10.train_list + CIFAR10.test_list), CIFAR10.meta["filename"]),
        read=_read_cifar10,
        fetch=lambda base, split: CIFAR10(str(base), download=True),
        url=CIFAR10.url,
    )


def _svhn_files() -> FileSource:
    from torchvision.datasets import SVHN

    return FileSource(
        layouts=("",),
        names=lambda split: (SVHN.split_list[split][1],),
        read=_read_svhn,
        fetch=lambda base, split: SVHN(str(base), split=split, download=True),
        url=SVHN.split_list["train"][0],
    )


def _celeba_files() -> FileSource:
    from torchvision.datasets import CelebA

    return FileSource(
        layouts=(CelebA.base_folder,),
        names=lambda split: (
            "img_align_celeba",
            *(name for _, _, name in CelebA.file_list if not name.endswith(".zip")),
        ),
        read=_read_celeba,
        fetch=lambda base, split: CelebA(str(base), split=split, download=True),
        url="https://drive.google.com/",
        decodes=True,
        get_hint="download it by hand from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
    )


def _imagefolder_files() -> FileSource:
    return FileSource(
        layouts=("",),
        names=lambda split: (split,),
        read=_read_imagefolder,
        fetch=None,
        url=None,
        decodes=True,
        needs_root=True,
    )


# --- the registry (the order is the one the config's error message lists) ---------------------

DATASETS.register(
    "mnist",
    Dataset(
        (1, 28, 28),
        "MNIST",
        files=_mnist_files,
        test_size=10_000,
        train_size=60_000,
        labels="classes",
        label_names=DIGIT_NAMES,
    ),
)
DATASETS.register(
    "fashion-mnist",
    Dataset(
        (1, 28, 28),
        "Fashion-MNIST",
        files=_fashion_mnist_files,
        test_size=10_000,
        train_size=60_000,
        labels="classes",
        label_names=FASHION_MNIST_NAMES,
    ),
)
DATASETS.register(
    "cifar10",
    Dataset(
        (3, 32, 32),
        "CIFAR-10",
        files=_cifar10_files,
        test_size=10_000,
        train_size=50_000,
        labels="classes",
        label_names=CIFAR10_NAMES,
    ),
)
DATASETS.register(
    "svhn",
    Dataset(
        (3, 32, 32),
        "SVHN",
        files=_svhn_files,
        test_size=26_032,
        train_size=73_257,
        labels="classes",
        label_names=DIGIT_NAMES,
    ),
)
DATASETS.register(
    "celeba",
    Dataset(
        (3, 64, 64),
        "CelebA",
        files=_celeba_files,
        train_size=162_770,
        labels="attributes",
        label_names=CELEBA_ATTRIBUTES,
    ),
)
DATASETS.register("imagefolder", Dataset((3, 64, 64), "imagefolder", files=_imagefolder_files, labels="classes"))
DATASETS.register(
    "digits",
    Dataset(
        (1, 8, 8),
        "digits",
        generate=lambda cfg, split: _digits(split),
        origin="sklearn",
        train_size=DIGITS_IMAGES - DIGITS_IMAGES // 5,
        labels="classes",
        label_names=DIGIT_NAMES,
    ),
)
DATASETS.register(
    "synthetic",
    Dataset(
        (1, 8, 8),
        "synthetic",
        origin="synthetic",
        labels="classes",
        label_names=SYNTHETIC_NAMES,
        generate=lambda cfg, split: _synthetic(cfg.synthetic_size, cfg.shape[1:], split),
        train_size=lambda cfg: cfg.synthetic_size,
    ),
)
