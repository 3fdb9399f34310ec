"""Datasets as 8-bit image tensors, offline sources first, clear errors when files are missing (issue #2).

:func:`load_split` returns full 8-bit pixels (0..255); reduction to ``n_bits`` belongs to the
objective (Glow, section 5). Geometry follows the config: ``resize: pad`` zero-pads
symmetrically (the official Glow MNIST pipeline pads 28 -> 32), ``resize: resize`` resamples
bilinearly with antialiasing; ``channels: 3`` tiles gray images (official MNIST pipeline,
openai/glow issue #70) and ``channels: 1`` turns colour into ITU-R 601-2 luminance.

File-based datasets resolve in order: ``data.root``, the cache directory (argument, else
``$GLOW_REPRO_DATA``, else ``~/.cache/glow-repro/data``), for Fashion-MNIST the Debian package
``dataset-fashion-mnist``, and finally a torchvision download when ``data.download`` is true.
MNIST-style IDX files are read with numpy (gzipped or not, flat or in torchvision's
``<Name>/raw`` layout); the other datasets are read by their torchvision classes. CelebA and
image folders are centre-cropped to a square and resized to ``image_size`` while decoding.
Decoded arrays are kept in memory per resolved file set, so a study that loads the same data
many times pays for decoding once.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageOps
from tqdm import tqdm

from glow_repro.config import ConfigError, DataConfig
from glow_repro.errors import DataUnavailableError

Split = Literal["train", "test"]
Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images [N, C, H, W], int64 labels [N]

#: Where the Debian package ``dataset-fashion-mnist`` installs its IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_PROBE_TIMEOUT_S = 3.0  # a download first checks that the host answers at all
_DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation while torchvision downloads
_SYNTHETIC_SEEDS = {"train": 0, "test": 1}
_SYNTHETIC_LEVELS = 4  # gray levels 0, 85, 170, 255


@dataclass(frozen=True)
class ImageData:
    """One split of a dataset, ready for the objective."""

    images: torch.Tensor  # uint8 [N, C, H, W], full 8-bit values 0..255
    labels: torch.Tensor  # int64 [N]; zeros where the dataset has no labels
    name: str  # "<dataset>/<split>", e.g. "fashion-mnist/test"
    source: str  # directory the files came from, or "synthetic" / "sklearn"


def default_cache_dir() -> Path:
    """``$GLOW_REPRO_DATA`` if set, else ``~/.cache/glow-repro/data``."""
    env = os.environ.get("GLOW_REPRO_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "glow-repro" / "data"


def load_split(cfg: DataConfig, split: Split, *, cache_dir: Path | None = None) -> ImageData:
    """Load ``split`` of ``cfg.dataset`` as uint8 images of shape ``cfg.shape`` (issue #2)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    size = cfg.shape[1:]
    if cfg.dataset == "synthetic":
        (images, labels), source = _synthetic(cfg.synthetic_size, size, split), "synthetic"
    elif cfg.dataset == "digits":
        (images, labels), source = _digits(split), "sklearn"
    else:
        images, labels, source = _from_files(cfg, split, limit, cache_dir)
    tensor = torch.from_numpy(np.array(images[:limit]))  # a copy: cached arrays stay untouched
    tensor = _fit_size(tensor, size, cfg)
    tensor = _fit_channels(tensor, cfg.shape[0])
    return ImageData(
        images=tensor,
        labels=torch.from_numpy(np.array(labels[:limit], dtype=np.int64)),
        name=f"{cfg.dataset}/{split}",
        source=source,
    )


# --- geometry ---------------------------------------------------------------------------------


def _fit_size(images: torch.Tensor, size: tuple[int, int], cfg: DataConfig) -> torch.Tensor:
    """Zero-pad symmetrically (extra pixel bottom/right) or resample to ``size``."""
    h, w = images.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return images
    if cfg.resize == "resize":
        resized = F.interpolate(
            images.float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )
        return resized.round_().clamp_(0, 255).to(torch.uint8)
    if th < h or tw < w:
        raise ConfigError(
            f"data.image_size={cfg.image_size} is smaller than {cfg.dataset}'s {h}x{w} images; "
            f"data.resize=pad only enlarges: use data.resize=resize or data.image_size >= {max(h, w)}"
        )
    top, left = (th - h) // 2, (tw - w) // 2
    return F.pad(images, (left, tw - w - left, top, th - h - top))


def _fit_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Tile gray to ``channels`` or reduce RGB to luminance L = (299 R + 587 G + 114 B) / 1000."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
    luminance = (images.to(torch.int32) * weights).sum(1, keepdim=True) + 500
    return luminance.div(1000, rounding_mode="floor").to(torch.uint8)


# --- generated and bundled datasets -----------------------------------------------------------


@lru_cache(maxsize=4)
def _synthetic(n: int, size: tuple[int, int], split: Split) -> Arrays:
    """Smooth blobs (label 0) and stripes (label 1) on ``_SYNTHETIC_LEVELS`` gray levels.

    Drawn directly at ``size``; train and test use different fixed seeds of one distribution.
    """
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
    return _frozen(levels.to(torch.uint8).unsqueeze(1).numpy(), kind.numpy())


@lru_cache(maxsize=1)
def _digits_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    return images, digits.target.astype(np.int64), order


def _digits(split: Split) -> Arrays:
    """scikit-learn's 8x8 digits (values 0..16 scaled to 0..255); a fixed 80/20 split (seed 0)."""
    images, labels, order = _digits_all()
    n_test = len(order) // 5
    chosen = order[:-n_test] if split == "train" else order[-n_test:]
    return images[chosen], labels[chosen]


# --- file-based datasets ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """Where one file-based dataset's files sit under a base directory, and how to read them."""

    layouts: tuple[str, ...]  # directories under a base that may hold the files
    names: Callable[[Split], tuple[str, ...]]  # files (or folders) one split needs
    read: Callable[[Path, tuple[Path, ...], Split, int | None, tuple[int, int]], Arrays]
    fetch: Callable[[Path, Split], object] | None  # torchvision download into a base
    url: str | None  # where ``fetch`` downloads from
    gz_ok: bool = False  # accept ``name.gz`` for ``name``
    decodes: bool = False  # reads image files one by one (limit and size shape the cache)
    needs_root: bool = False  # only ``data.root`` can hold it
    fallbacks: tuple[Path, ...] = ()  # system directories tried after the cache
    get_hint: str = ""  # another way to get the files


def _from_files(
    cfg: DataConfig, split: Split, limit: int | None, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, str]:
    source = _source(cfg.dataset)
    if source.needs_root and cfg.root is None:
        raise ConfigError(
            f"data.root: required for dataset {cfg.dataset} "
            "(a folder holding train/<class>/<images> and test/<class>/<images>)"
        )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    bases = [cfg.root] if source.needs_root else [b for b in (cfg.root, cache) if b is not None]
    candidates = _candidates(source, bases) + [(f, f) for f in source.fallbacks]
    found = _find(source, candidates, split)
    failure = ""
    if found is None and cfg.download:
        target = cfg.root or cache
        failure = _download(source, target, split)
        found = None if failure else _find(source, _candidates(source, [target]), split)
    if found is None:
        raise DataUnavailableError(_missing_message(cfg, split, source, candidates, cache, failure))
    base, folder, paths = found
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    want = (limit, cfg.shape[1:]) if source.decodes else (None, (0, 0))
    images, labels = _read_cached(cfg.dataset, split, base, paths, stamp, *want)
    return images, labels, str(folder)


def _locate(folder: Path, name: str, gz_ok: bool) -> Path | None:
    for candidate in (name, name + ".gz") if gz_ok else (name,):
        if (folder / candidate).exists():
            return folder / candidate
    return None


def _candidates(source: _Source, bases: list[Path]) -> list[tuple[Path, Path]]:
    """(base, folder) pairs in resolution order: each base with each of the source's layouts."""
    return [(base, base / layout) for base in bases for layout in source.layouts]


def _find(
    source: _Source, candidates: list[tuple[Path, Path]], split: Split
) -> tuple[Path, Path, tuple[Path, ...]] | None:
    """The first (base, folder, files) where every file of ``split`` exists."""
    for base, folder in candidates:
        paths = [_locate(folder, name, source.gz_ok) for name in source.names(split)]
        if all(paths):
            return base, folder, tuple(p for p in paths if p is not None)
    return None


@lru_cache(maxsize=8)
def _read_cached(
    dataset: str,
    split: Split,
    base: Path,
    paths: tuple[Path, ...],
    stamp: tuple[tuple[str, int, int], ...],  # part of the key: rereads files that changed
    limit: int | None,
    size: tuple[int, int],
) -> Arrays:
    try:
        images, labels = _source(dataset).read(base, paths, split, limit, size)
    except (OSError, RuntimeError, ValueError, EOFError) as err:
        raise DataUnavailableError(
            f"{dataset}/{split}: cannot read the files in {paths[0].parent}: {_one_line(err)}; "
            "replace them with intact copies"
        ) from None
    return _frozen(np.ascontiguousarray(images, dtype=np.uint8), np.asarray(labels, np.int64))


def _frozen(images: np.ndarray, labels: np.ndarray) -> Arrays:
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _download(source: _Source, target: Path, split: Split) -> str:
    """Fetch through torchvision into ``target``; return why it failed, or "" on success."""
    if source.fetch is None or source.url is None:
        return "this dataset has no download"
    url = urlsplit(source.url)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"cannot reach {host} ({_one_line(err)})"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # urllib in torchvision sets no timeout
    try:
        target.mkdir(parents=True, exist_ok=True)
        source.fetch(target, split)
    except Exception as err:  # noqa: BLE001 - torchvision raises anything from URLError to ImportError
        return f"download from {source.url} failed ({type(err).__name__}: {_one_line(err)})"
    finally:
        socket.setdefaulttimeout(previous)
    return ""


def _missing_message(
    cfg: DataConfig,
    split: Split,
    source: _Source,
    candidates: list[tuple[Path, Path]],
    cache: Path,
    failure: str,
) -> str:
    names = source.names(split)
    shown = [f"{n}[.gz]" if source.gz_ok else n for n in names]
    looked = []
    for _, folder in candidates:
        if not folder.is_dir():
            looked.append(f"{folder} (no such directory)")
            continue
        missing = [s for s, n in zip(shown, names) if not _locate(folder, n, source.gz_ok)]
        looked.append(f"{folder} (missing {', '.join(missing)})")
    if source.needs_root:  # an image folder: the user's own files, no cache, no download
        put = f"Put them in {cfg.root} as <split>/<class>/<image files> (torchvision ImageFolder)"
    else:
        put = f"Put them in {cache / source.layouts[0]} or in a directory named by data.root"
    ways = [put]
    if source.fetch is not None and not cfg.download:
        ways.append("rerun with `--set data.download=true` (needs internet)")
    if source.get_hint:
        ways.append(source.get_hint)
    message = (
        f"{cfg.dataset}/{split}: data files not found: {', '.join(shown)}; looked in "
        f"{'; '.join(looked)}. {', or '.join(ways)}"
    )
    if failure:
        message += f". The download failed: {failure}; copy the files from a machine with internet"
    return message


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


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
    base: Path, paths: tuple[Path, ...], split: Split, limit: int | None, size: tuple[int, int]
) -> Arrays:
    images, labels = (_idx_array(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{paths[0].name} {images.shape} does not match {paths[1].name} {labels.shape}")
    return images[:, None], labels


def _read_cifar10(
    base: Path, paths: tuple[Path, ...], split: Split, limit: int | None, size: tuple[int, int]
) -> Arrays:
    data = torchvision.datasets.CIFAR10(str(base), train=split == "train", download=False)
    return data.data.transpose(0, 3, 1, 2), np.asarray(data.targets)


def _read_svhn(
    base: Path, paths: tuple[Path, ...], split: Split, limit: int | None, size: tuple[int, int]
) -> Arrays:
    data = torchvision.datasets.SVHN(str(base), split=split, download=False)
    return data.data, data.labels


def _read_celeba(
    base: Path, paths: tuple[Path, ...], split: Split, limit: int | None, size: tuple[int, int]
) -> Arrays:
    data = torchvision.datasets.CelebA(str(base), split=split, target_type=[], download=False)
    return _decode(data, limit, size, f"celeba/{split}")


def _read_imagefolder(
    base: Path, paths: tuple[Path, ...], split: Split, limit: int | None, size: tuple[int, int]
) -> Arrays:
    return _decode(torchvision.datasets.ImageFolder(str(paths[0])), limit, size, f"imagefolder/{split}")


def _decode(
    data: torchvision.datasets.VisionDataset, limit: int | None, size: tuple[int, int], what: str
) -> Arrays:
    """Centre-crop each image to a square and resize it to ``size``; labels 0 where there are none."""
    n = len(data) if limit is None else min(limit, len(data))
    images = np.empty((n, 3, *size), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    for i in tqdm(range(n), desc=f"decoding {what}", unit="img", disable=None):
        image, target = data[i]
        fitted = ImageOps.fit(image.convert("RGB"), (size[1], size[0]), Image.Resampling.BILINEAR)
        images[i] = np.asarray(fitted).transpose(2, 0, 1)
        labels[i] = 0 if target is None else int(target)
    return images, labels


def _idx_names(split: Split) -> tuple[str, ...]:
    prefix = "train" if split == "train" else "t10k"
    return (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")


def _mnist_like(cls: type[torchvision.datasets.MNIST], **extra: object) -> _Source:
    return _Source(
        layouts=("", f"{cls.__name__}/raw"),
        names=_idx_names,
        read=_read_idx,
        fetch=lambda base, split: cls(str(base), train=split == "train", download=True),
        url=cls.mirrors[0],
        gz_ok=True,
        **extra,  # type: ignore[arg-type]
    )


def _source(dataset: str) -> _Source:
    tv = torchvision.datasets
    if dataset == "mnist":
        return _mnist_like(tv.MNIST)
    if dataset == "fashion-mnist":
        return _mnist_like(
            tv.FashionMNIST,
            fallbacks=(DEBIAN_FASHION_MNIST,),
            get_hint="`sudo apt-get install dataset-fashion-mnist`",
        )
    if dataset == "cifar10":
        cifar = tv.CIFAR10
        return _Source(
            layouts=(cifar.base_folder,),
            names=lambda split: tuple(
                name for name, _ in cifar.train_list + cifar.test_list
            ) + (cifar.meta["filename"],),
            read=_read_cifar10,
            fetch=lambda base, split: cifar(str(base), download=True),
            url=cifar.url,
        )
    if dataset == "svhn":
        return _Source(
            layouts=("",),
            names=lambda split: (tv.SVHN.split_list[split][1],),
            read=_read_svhn,
            fetch=lambda base, split: tv.SVHN(str(base), split=split, download=True),
            url=tv.SVHN.split_list["train"][0],
        )
    if dataset == "celeba":
        celeba = tv.CelebA
        return _Source(
            layouts=(celeba.base_folder,),
            names=lambda split: ("img_align_celeba",)
            + tuple(name for _, _, name in celeba.file_list if not name.endswith(".zip")),
            read=_read_celeba,
            fetch=lambda base, split: celeba(str(base), split=split, download=True),
            url="https://drive.google.com/",
            decodes=True,
            get_hint="download it by hand from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
        )
    if dataset == "imagefolder":
        return _Source(
            layouts=("",),
            names=lambda split: (split,),
            read=_read_imagefolder,
            fetch=None,
            url=None,
            decodes=True,
            needs_root=True,
        )
    raise ValueError(f"no file source for dataset {dataset!r}")
