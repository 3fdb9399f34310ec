"""TensorBoard mirroring: event files readable by TensorBoard's own reader, with the values of
the JSONL logs; execution-only; a clear error without the extra; a failure never stops a run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glow_repro.cli import main
from glow_repro.core.config import RunConfig, run_identity
from glow_repro.image_panels import FIGURE_SUFFIX, shown_images
from glow_repro.run.tensorboard_log import EVENTS_TAG, TensorBoardMirror
from glow_repro.run.train import train

TINY = {
    "data": {"dataset": "synthetic", "synthetic_size": 128},
    "model": {"depth": 1, "levels": 1, "width": 8},
    "train": {"steps": 6, "batch_size": 16, "eval_every": 3, "checkpoint_every": 3, "progress": False,
              "n_samples": 2, "sample_temperatures": [0.0, 1.0], "device": "cpu"},
}  # fmt: skip


def accumulate(directory: Path) -> EventAccumulator:
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tb") / "run"
    config = RunConfig.model_validate({**TINY, "train": {**TINY["train"], "tensorboard": True}})
    train(config, out, threads=1)
    return out


def test_event_files_hold_the_logged_curves_and_samples(run_dir: Path) -> None:
    events = accumulate(run_dir / "tensorboard")
    tags = events.Tags()
    assert {"train/bpd", "train/lr", "train/grad_norm", "train/images_per_s", "test/bpd"} <= set(tags["scalars"])
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    logged = {(e.step, round(e.value, 5)) for e in events.Scalars("train/bpd")}
    assert logged == {(row["step"], round(row["train_bpd"], 5)) for row in metrics}
    evals = read_jsonl(run_dir / "evals.jsonl")
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("test/bpd")] == [
        (row["step"], round(row["test_bpd"], 5)) for row in evals
    ]
    figures = shown_images(run_dir / "samples")  # each native grid by its figure
    assert set(figures) == {"temperatures", "reconstructions"}
    assert all(png.name.endswith(FIGURE_SUFFIX) for png in figures.values())
    assert sorted(tag.removeprefix("samples/") for tag in tags["images"]) == sorted(figures)
    for name, png in figures.items():
        (image,) = events.Images(f"samples/{name}")
        with Image.open(png) as drawn:
            assert (image.width, image.height) == drawn.size and image.width >= 256


def test_stability_events_are_text(tmp_path: Path) -> None:
    mirror = TensorBoardMirror(tmp_path)
    mirror.rows("events", [{"step": 7, "kind": "loss_spike", "value": 9.5, "threshold": 4.0, "layer": "flow.1"}])
    mirror.close()
    events = accumulate(tmp_path)
    (tensor,) = events.Tensors(f"{EVENTS_TAG}/text_summary")
    assert tensor.step == 7
    assert tensor.tensor_proto.string_val[0].decode() == "step 7: loss_spike, value 9.5, threshold 4, layer flow.1"


def test_tensorboard_is_execution_only() -> None:
    plain = RunConfig.model_validate(TINY)
    watched = RunConfig.model_validate({**TINY, "train": {**TINY["train"], "tensorboard": True}})
    assert run_identity(plain) == run_identity(watched)


def test_a_failing_writer_warns_once_and_the_mirror_turns_off(tmp_path: Path) -> None:
    mirror = TensorBoardMirror(tmp_path)

    class Broken:
        def add_scalar(self, *args: object) -> None:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    mirror.writer = Broken()
    with pytest.warns(RuntimeWarning, match="No space left on device"):
        mirror.rows("metrics", [{"step": 1, "train_bpd": 3.0}])
    assert mirror.writer is None
    mirror.rows("metrics", [{"step": 2, "train_bpd": 3.0}])  # off: no second warning, no error


def test_asking_without_the_extra_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(main, ["train", str(config), "--out", str(tmp_path / "run"), "--tensorboard"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "error: train.tensorboard: TensorBoard is not installed; install the extra with: "
        "pip install 'glow-repro[tensorboard]'"]  # fmt: skip
    assert not (tmp_path / "run").exists(), "nothing is written before the check"
