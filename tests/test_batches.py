"""The training batch of each step: the ranks' shards are the single-process batch bit for
bit, prefetching in a background thread changes no batch and no loss, and the CUDA path pins
host memory and copies without blocking."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
import torch

from glow_repro.core import batches
from glow_repro.core.batches import BatchOrder, BatchStream, prepare_batch, shift_augment, step_generator
from glow_repro.core.data import load_split
from glow_repro.core.objective import preprocess
from glow_repro.run.engine import Engine
from glow_repro.run.rundir import RunDir
from glow_repro.run.train import train
from tests.conftest import tiny_config

SMALL = {
    "data": {"synthetic_size": 64, "image_size": 8},
    "model": {"depth": 1, "levels": 2, "width": 8},
    "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "checkpoint_every": 3, "n_samples": 2, "device": "cpu"},
}
TIMING = ("step_time", "images_per_s", "wall_time")


def config(**train_options):
    return tiny_config(SMALL, {"train": train_options})


def whole_batch(cfg, data, order, step):
    """The batch as one process prepared it before shards were prepared apart: indices,
    augmentation and noise over the whole batch."""
    chosen = order.indices(step)
    images = data.images[chosen]
    if cfg.train.augment_shift:
        images = shift_augment(images, step_generator(cfg.seed, step, stream=3))
    return preprocess(images, cfg.data.n_bits, generator=step_generator(cfg.seed, step, stream=0)), data.labels[chosen]


@pytest.mark.parametrize("world_size", [2, 4])
def test_the_ranks_shards_put_together_are_the_single_process_batch(world_size):
    cfg = tiny_config(SMALL, {"train": {"augment_shift": True}, "model": {"conditioning": "class"}}, seed=3)
    data = load_split(cfg.data, "train")
    order = BatchOrder(data, cfg.train.batch_size, cfg.seed)
    for step in (1, 8, 9, 20):  # across an epoch boundary (8 batches per epoch)
        x, y = whole_batch(cfg, data, order, step)
        single_x, single_y = prepare_batch(cfg, data, order, step)
        shards = [prepare_batch(cfg, data, order, step, rank=r, world_size=world_size) for r in range(world_size)]
        assert all(len(shard_x) == len(x) // world_size for shard_x, _ in shards)
        assert torch.equal(torch.cat([shard_x for shard_x, _ in shards]), x) and torch.equal(single_x, x)
        assert torch.equal(torch.cat([shard_y for _, shard_y in shards]), y) and torch.equal(single_y, y)


class InlineExecutor:
    """A stand-in for the background thread: each batch is prepared when it is asked for."""

    def __init__(self, *args, **kwargs):
        pass

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, **kwargs):
        pass


def recorded_run(tmp_path, monkeypatch, name, cfg):
    """Train ``cfg``; return the batches the engine stepped on, the thread that prepared each
    step's batch, and the logs without timing."""
    stepped, threads = [], {}
    step, prepare = Engine.step, batches.prepare_batch

    def recording_step(engine, x, *args, **kwargs):
        stepped.append(x.clone())
        return step(engine, x, *args, **kwargs)

    def recording_prepare(config, data, order, at, **kwargs):
        threads[at] = threading.current_thread().name
        return prepare(config, data, order, at, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "step", recording_step)
        patch.setattr(batches, "prepare_batch", recording_prepare)
        train(cfg, tmp_path / name, threads=1)
    run = RunDir(tmp_path / name)
    logs = [
        [{k: v for k, v in row.items() if k not in TIMING} for row in log.read()] for log in (run.metrics, run.evals)
    ]
    return stepped, threads, logs


def test_prefetching_changes_no_batch_and_no_loss(tmp_path, monkeypatch):
    cfg = config(augment_shift=True)
    ahead, ahead_threads, ahead_logs = recorded_run(tmp_path, monkeypatch, "prefetch", cfg)
    monkeypatch.setattr(batches, "ThreadPoolExecutor", InlineExecutor)
    inline, inline_threads, inline_logs = recorded_run(tmp_path, monkeypatch, "inline", cfg)
    # the batches after the first were prepared in the background thread, and only there
    assert all(ahead_threads[s].startswith("batches") for s in range(2, 7)) and len(ahead_threads) == 6
    assert all(name == threading.current_thread().name for name in inline_threads.values())
    data = load_split(cfg.data, "train")
    order = BatchOrder(data, cfg.train.batch_size, cfg.seed)
    expected = [whole_batch(cfg, data, order, s)[0] for s in range(1, 7)]
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(ahead, inline, expected, strict=True))
    assert ahead_logs == inline_logs


def test_a_step_other_than_the_prefetched_one_gets_its_own_batch():
    """After a rollback the loop asks for an earlier step than the one prepared."""
    cfg = config()
    data = load_split(cfg.data, "train")
    order = BatchOrder(data, cfg.train.batch_size, cfg.seed)
    with BatchStream(cfg, data, order, torch.device("cpu"), torch.contiguous_format) as stream:
        stream.take(4, prefetch_next=True)
        x, _ = stream.take(2, prefetch_next=True)
        assert torch.equal(x, prepare_batch(cfg, data, order, 2)[0])
        assert torch.equal(stream.take(3, prefetch_next=False)[0], prepare_batch(cfg, data, order, 3)[0])


def test_the_cuda_path_pins_host_memory_and_copies_without_blocking(monkeypatch):
    """No GPU needed: pinning and the copy to the device are recorded instead of done."""
    cfg = tiny_config(SMALL, {"model": {"conditioning": "class"}})
    data = load_split(cfg.data, "train")
    order = BatchOrder(data, cfg.train.batch_size, cfg.seed)
    pinned, copies = [], []
    to = torch.Tensor.to

    def pin_memory(tensor):
        pinned.append(tensor.dtype)
        return tensor

    def recording_to(tensor, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            copies.append((tensor.dtype, kwargs))
            return tensor
        return to(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    cuda = torch.device("cuda", 0)
    with BatchStream(cfg, data, order, cuda, torch.channels_last) as stream:
        for step in (1, 2):
            x, y = stream.take(step, prefetch_next=step == 1)
            expected_x, expected_y = prepare_batch(cfg, data, order, step)
            assert torch.equal(x, expected_x) and torch.equal(y, expected_y)
    assert pinned == [torch.float32, torch.int64] * 2
    one_step = [
        (torch.float32, {"memory_format": torch.channels_last, "non_blocking": True}),
        (torch.int64, {"non_blocking": True}),
    ]
    assert copies == one_step * 2
    pinned.clear()
    with BatchStream(cfg, data, order, torch.device("cpu"), torch.channels_last) as stream:
        stream.take(1, prefetch_next=False)
    assert pinned == []  # nothing changes on the CPU
