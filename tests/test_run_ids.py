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
# The CPU ablations were recalibrated by the power pilot (docs/pilot.md), which moved their ids.
PINNED = [
    ("studies/smoke.yaml", 4, "additive-s0-28daf19f", "affine-s1-48859d19", "b603cdf916cf"),
    ("studies/depth_ablation.yaml", 16, "depth2-s0-d0337db6", "depth16-s3-710d850a", "c19cb27c0347"),
    (
        "studies/permutation_ablation.yaml",
        24,
        "additive-reverse-s0-369859c3",
        "affine-conv1x1-s3-e0f84535",
        "0edf9624154a",
    ),
    ("studies/scale_ablation.yaml", 48, "sigmoid-lr0.003-s4-29e53a00", "exp-lr0.007-s11-3c8c9ad8", "0384bfe9a3f2"),
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
