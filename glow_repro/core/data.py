"""Datasets as 8-bit image tensors, offline sources first, clear errors when files are missing.

What differs between datasets (shape, files, reader) is their record in
:mod:`glow_repro.core.datasets`; this module treats every dataset alike.

:func:`load_split` returns full 8-bit pixels (0..255); reduction to ``n_bits`` belongs to the
objective (Glow, section 5). Geometry follows the config: ``resize: pad`` zero-pads
symmetrically (the official Glow MNIST pipeline pads 28 -> 32), ``resize: resize`` resamples
bilinearly with antialiasing; ``channels: 3`` tiles gray images (official MNIST pipeline,
openai/glow#70) and ``channels: 1`` turns colour into ITU-R 601-2 luminance.

File-based datasets resolve in order: ``data.root``, the cache directory (argument, else
``$GLOW_REPRO_DATA``, else ``~/.cache/glow-repro/data``), for Fashion-MNIST the Debian package
``dataset-fashion-mnist``, and finally a torchvision download when ``data.download`` is true.
Decoded arrays are kept in memory per resolved file set, so a study that loads the same data
many times pays for decoding once.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
import torch.nn.functional as F

from glow_repro.core.config import ConfigError, DataConfig
from glow_repro.core.datasets import Arrays, FileSource, SplitName, frozen, label_names
from glow_repro.core.registry import DATASETS
from glow_repro.errors import DataUnavailableError

_PROBE_TIMEOUT_S = 3.0  # a download first checks that the host answers at all
_DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation while torchvision downloads


@dataclass(frozen=True)
class ImageData:
    """One split of a dataset, ready for the objective."""

    images: torch.Tensor  # uint8 [N, C, H, W], full 8-bit values 0..255
    labels: torch.Tensor  # int64 [N] class indices, or [N, A] binary attributes (CelebA)
    name: str  # "<dataset>/<split>", e.g. "fashion-mnist/test"
    source: str  # directory the files came from, or "synthetic" / "sklearn"
    label_names: tuple[str, ...] = ()  # the names of the classes (or attributes), index order


def default_cache_dir() -> Path:
    """``$GLOW_REPRO_DATA`` if set, else ``~/.cache/glow-repro/data``."""
    env = os.environ.get("GLOW_REPRO_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "glow-repro" / "data"


def load_split(cfg: DataConfig, split: SplitName, *, cache_dir: Path | None = None) -> ImageData:
    """Load ``split`` of ``cfg.dataset`` as uint8 images of shape ``cfg.shape``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    size = cfg.shape[1:]
    dataset = DATASETS[cfg.dataset]
    if dataset.generate is not None:
        (images, labels), source = dataset.generate(cfg, split), dataset.origin
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
        label_names=label_names(cfg),
    )


# --- geometry ---------------------------------------------------------------------------------


def _fit_size(images: torch.Tensor, size: tuple[int, int], cfg: DataConfig) -> torch.Tensor:
    """Zero-pad symmetrically (extra pixel bottom/right) or resample to ``size``."""
    h, w = images.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return images
    if cfg.resize == "resize":
        resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
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


# --- file-based datasets ----------------------------------------------------------------------


def _from_files(
    cfg: DataConfig, split: SplitName, limit: int | None, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, str]:
    source = _files(cfg.dataset)
    if source.needs_root and cfg.root is None:
        raise ConfigError(
            f"data.root: required for dataset {cfg.dataset} "
            "(a folder holding train/<class>/<images> and test/<class>/<images>)"
        )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    bases = [b for b in ((cfg.root,) if source.needs_root else (cfg.root, cache)) if b is not None]
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


def _files(dataset: str) -> FileSource:
    files = DATASETS[dataset].files
    assert files is not None, f"{dataset} is generated"  # only file datasets come here
    return files()


def _locate(folder: Path, name: str, gz_ok: bool) -> Path | None:
    for candidate in (name, name + ".gz") if gz_ok else (name,):
        if (folder / candidate).exists():
            return folder / candidate
    return None


def _candidates(source: FileSource, bases: list[Path]) -> list[tuple[Path, Path]]:
    """(base, folder) pairs in resolution order: each base with each of the source's layouts."""
    return [(base, base / layout) for base in bases for layout in source.layouts]


def _find(
    source: FileSource, candidates: list[tuple[Path, Path]], split: SplitName
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
    split: SplitName,
    base: Path,
    paths: tuple[Path, ...],
    stamp: tuple[tuple[str, int, int], ...],  # part of the key: rereads files that changed
    limit: int | None,
    size: tuple[int, int],
) -> Arrays:
    try:
        images, labels = _files(dataset).read(base, paths, split, limit, size)
    except (OSError, RuntimeError, ValueError, EOFError) as err:
        raise DataUnavailableError(
            f"{dataset}/{split}: cannot read the files in {paths[0].parent}: {_one_line(err)}; "
            "replace them with intact copies"
        ) from None
    return frozen(np.ascontiguousarray(images, dtype=np.uint8), np.asarray(labels, np.int64))


def _download(source: FileSource, target: Path, split: SplitName) -> str:
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
    except Exception as err:  # torchvision raises anything from URLError to ImportError
        return f"download from {source.url} failed ({type(err).__name__}: {_one_line(err)})"
    finally:
        socket.setdefaulttimeout(previous)
    return ""


def _missing_message(
    cfg: DataConfig,
    split: SplitName,
    source: FileSource,
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
