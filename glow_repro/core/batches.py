"""Training batches as a pure function of ``(seed, step)``, and a stream that prepares the next
one while the current step runs (README, "Interrupting and resuming" and "Bigger machines").

Batch ``step`` (1-based) is a slice of the seeded, drop-last epoch order; its images get the
shift augmentation (when enabled) and the dequantisation noise of that step (Glow, section 5).
A data-parallel rank prepares only its own rows, yet draws every random number of the global
batch from the step's generators, so its rows hold exactly the values the whole batch would:
the ranks' shards put together are the single-process batch, bit for bit.

:class:`BatchStream` hands the loop the batch of a step, computed in a background thread while
the step before it trains; on CUDA the batch waits in pinned host memory and is copied to the
device without blocking the host. The values never depend on the thread: every draw comes
from the step's own generators.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from glow_repro.core.config import RunConfig
from glow_repro.core.data import ImageData
from glow_repro.core.objective import preprocess
from glow_repro.core.objectives import Batch, objective_for


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator for one purpose (``stream``) at one step, independent of everything else."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 7919 + stream) % (2**63))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=step_generator(seed, epoch, stream=1))


def shift_augment(
    images: torch.Tensor, generator: torch.Generator, *, within: tuple[int, int] | None = None
) -> torch.Tensor:
    """Random translation of each image by up to round(0.1 * size) pixels per axis, edges
    filled with the nearest pixel: the official code's Keras ``width_shift_range=0.1,
    height_shift_range=0.1`` (whose shifts are real-valued and interpolated; ours are whole
    pixels, so 8-bit values stay exact). ``within=(start, total)``: ``images`` are rows
    ``start...`` of a batch of ``total``, whose shifts the generator draws in full."""
    b, _, h, w = images.shape
    start, total = within or (0, b)
    reach_y, reach_x = round(0.1 * h), round(0.1 * w)
    dy = torch.randint(-reach_y, reach_y + 1, (total, 1), generator=generator)[start : start + b]
    dx = torch.randint(-reach_x, reach_x + 1, (total, 1), generator=generator)[start : start + b]
    rows = (torch.arange(h) - dy).clamp(0, h - 1)  # [b, h]: source row of each output row
    cols = (torch.arange(w) - dx).clamp(0, w - 1)
    picked = images[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2).contiguous()  # advanced indexing put channels last


class BatchOrder:
    """Which training images make batch ``step`` (1-based) of the seeded, drop-last epoch
    order: a pure function of the step."""

    def __init__(self, data: ImageData, batch_size: int, seed: int):
        self.n_images = len(data.images)
        self.batch_size = min(batch_size, self.n_images)
        self.per_epoch = self.n_images // self.batch_size
        self.seed = seed
        self._order: tuple[int, torch.Tensor] | None = None

    def epoch(self, step: int) -> float:
        return step / self.per_epoch

    def indices(self, step: int) -> torch.Tensor:
        epoch, index = divmod(step - 1, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.n_images, self.seed, epoch))
        start = index * self.batch_size
        return self._order[1][start : start + self.batch_size]


def shard_rows(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, stop) of rank ``rank``'s contiguous share of ``total`` rows, as
    ``torch.chunk`` splits them (equal shares when ``world_size`` divides ``total``)."""
    size = -(-total // world_size)
    start = min(rank * size, total)
    return start, min(start + size, total)


def prepare_batch(
    config: RunConfig, data: ImageData, order: BatchOrder, step: int, *, rank: int = 0, world_size: int = 1
) -> Batch:
    """Rank ``rank``'s rows of training batch ``step`` as float model input, with the labels
    the run's objective reads of them."""
    chosen = order.indices(step)
    start, stop = shard_rows(len(chosen), rank, world_size)
    within = (start, len(chosen))
    chosen = chosen[start:stop]
    images = data.images[chosen]
    if config.train.augment_shift:
        images = shift_augment(images, step_generator(config.seed, step, stream=3), within=within)
    noise = step_generator(config.seed, step, stream=0)
    x = preprocess(images, config.data.n_bits, generator=noise, within=within)
    return Batch(x, objective_for(config).batch_labels(data.labels, chosen))


class BatchStream:
    """The batches of successive steps for one rank, each prepared in a background thread
    while the previous step trains, and put on ``device`` (through pinned memory and a
    non-blocking copy on CUDA). Asking for any other step than the one prepared (after a
    rollback) prepares that one on the spot."""

    def __init__(
        self,
        config: RunConfig,
        data: ImageData,
        order: BatchOrder,
        device: torch.device,
        memory_format: torch.memory_format,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.config, self.data, self.order = config, data, order
        self.device, self.memory_format = device, memory_format
        self.rank, self.world_size = rank, world_size
        self.pin = device.type == "cuda"
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
        self._ahead: tuple[int, Future] | None = None

    def _host_batch(self, step: int) -> Batch:
        batch = prepare_batch(self.config, self.data, self.order, step, rank=self.rank, world_size=self.world_size)
        return batch.pinned() if self.pin else batch

    def take(self, step: int, *, prefetch_next: bool) -> Batch:
        """The device batch of ``step``; with ``prefetch_next``, step ``step + 1`` starts
        being prepared before this returns."""
        ahead, self._ahead = self._ahead, None
        batch = ahead[1].result() if ahead is not None else None  # the order's cache is not shared
        batch = batch if batch is not None and ahead is not None and ahead[0] == step else self._host_batch(step)
        if prefetch_next:
            self._ahead = (step + 1, self._worker.submit(self._host_batch, step + 1))
        return batch.to(self.device, self.memory_format, non_blocking=self.pin)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
