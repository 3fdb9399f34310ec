"""Run ids of the shipped studies and of configs/example.yaml are pinned: a rerun of a study
must find its finished runs, so a change to a study's base, a shared config or the id scheme
that moves an id fails here (docs/architecture.md, "Adding a study")."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from glow_repro.study.spec import expand, load_study

REPO = Path(__file__).resolve().parents[1]

# (study, runs, first run id, last run id, sha256 of all run ids joined by spaces)
# The CPU ablations were recalibrated by the power pilot (docs/pilot.md), which moved their ids,
# and then moved to seeds 100 and up, which no pilot and no earlier verdict had seen (their
# configs, and so the config part of each id's hash, are those of the recalibration).
PINNED = [
    ("studies/smoke.yaml", 4, "additive-s0-28daf19f", "affine-s1-48859d19", "b603cdf916cf"),
    ("studies/depth_ablation.yaml", 16, "depth2-s100-070b66ed", "depth16-s103-dc84ed6e", "28d243c6cd68"),
    (
        "studies/permutation_ablation.yaml",
        24,
        "additive-reverse-s100-30ba23fb",
        "affine-conv1x1-s103-966b17f3",
        "fa8a15546728",
    ),
    (
        "studies/scale_ablation.yaml",
        48,
        "sigmoid-lr0.003-s100-55fc566a",
        "exp-lr0.007-s107-68830ba4",
        "ad379b268190",
    ),
    ("studies/conditional.yaml", 8, "none-s100-f49dedc3", "class-s103-8738fd7b", "b6b6e63d6834"),
    ("studies/precision.yaml", 8, "float32-s100-f49dedc3", "bf16-s103-e61dc86c", "eeaea68b0ef9"),
    # The paper studies' budgets moved from steps to the paper's epochs (configs/paper_cifar10.yaml),
    # which moved these ids on purpose: 1406250 steps were 1800.6 epochs of 781 batches, past
    # Figure 3's last epoch, so `compare` had no paper value to set beside the final bpd.
    (
        "studies/paper/depth_ablation.yaml",
        27,
        "depth8-levels2-s0-928f0366",
        "depth32-levels4-s2-9dfb1382",
        "b252ca8bb02d",
    ),
    (
        "studies/paper/permutation_ablation.yaml",
        18,
        "additive-reverse-s0-5e857af0",
        "affine-conv1x1-s2-615b43ed",
        "3393a9833772",
    ),
    (
        "studies/paper/scale_ablation.yaml",
        18,
        "sigmoid-lr0.0005-s0-006a6a2f",
        "exp-lr0.002-s2-2e730484",
        "ffec93520e9c",
    ),
    # A delta of configs/paper_cifar10.yaml since its budget was in epochs: the study inlined a
    # base of 781.25 batches an epoch (1406250 steps, warmup 7813, evaluations every 39063), so
    # its unconditional arm was not the paper base; its ids moved when it became the base.
    (
        "studies/paper/conditional_cifar10.yaml",
        6,
        "none-s0-f26edb01",
        "class-s2-0f6869ad",
        "bfed2884bc70",
    ),
]


@pytest.mark.parametrize(("study", "count", "first", "last", "digest"), PINNED, ids=[p[0] for p in PINNED])
def test_shipped_study_run_ids_do_not_move(study: str, count: int, first: str, last: str, digest: str) -> None:
    ids = [run.run_id for run in expand(load_study(REPO / study))]
    assert (len(ids), ids[0], ids[-1]) == (count, first, last)
    assert hashlib.sha256(" ".join(ids).encode()).hexdigest()[:12] == digest


def test_example_config_run_id_does_not_move(tmp_path: Path) -> None:
    """configs/example.yaml (seed 0) as a one-run study keeps its id: the hash of its config."""
    study = tmp_path / "example.yaml"
    study.write_text(f"name: example\nbase: {REPO / 'configs' / 'example.yaml'}\nseeds: [0]\n")
    assert [run.run_id for run in expand(load_study(study))] == ["s0-bdc67123"]


def test_the_paper_conditional_studys_unconditional_arm_is_the_paper_base(tmp_path: Path) -> None:
    """Its runs without conditioning hash as configs/paper_cifar10.yaml at the same seeds."""
    study = tmp_path / "base.yaml"
    study.write_text(f"name: base\nbase: {REPO / 'configs' / 'paper_cifar10.yaml'}\nseeds: [0, 1, 2]\n")
    base = [run.run_id.rsplit("-", 1)[-1] for run in expand(load_study(study))]
    runs = expand(load_study(REPO / "studies" / "paper" / "conditional_cifar10.yaml"))
    assert [run.run_id.rsplit("-", 1)[-1] for run in runs if run.variant == "conditioning=none"] == base


def test_the_identity_marks_on_the_fields_give_the_keys_once_listed() -> None:
    """A run's identity is declared on the config's fields (EXECUTION_ONLY, ADDED_LATER); the
    keys derived from those marks are exactly the ones the hand-kept lists held."""
    from glow_repro.core.config import EXECUTION_ONLY_KEYS, LATER_KEYS

    assert sorted(EXECUTION_ONLY_KEYS) == sorted(
        [
            "train.threads",
            "train.progress",
            "data.root",
            "data.download",
            "train.channels_last",
            "train.compile",
            "train.grad_checkpointing",
            "train.tensorboard",
            "train.deterministic",
            "train.checkpoint_every_minutes",
        ]
    )
    assert LATER_KEYS == {
        "model.conditioning": "none",
        "model.class_weight": 0.01,
        "model.conditional_splits": False,
        "train.eval_every_epochs": None,
    }
