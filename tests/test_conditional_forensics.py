"""Forensics of a class-conditional run (README, "When training goes wrong"): the bad batch is
re-run with its labels on the objective the run trained on (the classifier's bits included),
and its capsule keeps those labels so that ``glow-repro replay`` finds the same layer."""

from __future__ import annotations

import math

import torch

from glow_repro.run.engine import build_model
from glow_repro.run.forensics import Finding, locate_nonfinite, replay_capsule, save_capsule
from glow_repro.run.rundir import RunDir
from glow_repro.run.train import train
from tests.test_stability import config

LABELS = torch.arange(8) % 2  # synthetic: blob, stripes


def classifier_poisoned():
    """A tiny class-conditional model, ActNorms initialised, whose classifier weights are
    infinite: only the conditional objective, which reads the classifier, goes non-finite."""
    cfg = config(model={"conditioning": "class"})
    torch.manual_seed(0)
    model = build_model(cfg, "cpu").train()
    x = torch.rand(8, *cfg.data.shape) - 0.5
    with torch.no_grad():
        model(x)
        model.classifier.weight.fill_(math.inf)
    return cfg, model, x


def test_the_re_run_uses_the_labels_and_the_conditional_objective():
    cfg, model, x = classifier_poisoned()
    assert locate_nonfinite(model, x, 8) == Finding("none", None)  # the marginal log p(x) has no classifier
    found = locate_nonfinite(model, x, 8, labels=LABELS, class_weight=cfg.model.class_weight)
    assert found == Finding("forward", "classifier")


def test_a_capsule_keeps_the_labels_and_replays_the_same_fault(tmp_path):
    cfg, model, x = classifier_poisoned()
    found = locate_nonfinite(model, x, 8, labels=LABELS, class_weight=cfg.model.class_weight)
    common = {"config": cfg, "model": model, "batch": x, "step": 3, "lr": 1e-3, "finding": found}
    save_capsule(tmp_path / "labelled.pt", labels=LABELS, **common)
    step, recorded, replayed = replay_capsule(tmp_path / "labelled.pt")
    assert step == 3 and replayed == recorded == Finding("forward", "classifier")
    save_capsule(tmp_path / "unlabelled.pt", **common)  # as before labels were kept
    assert replay_capsule(tmp_path / "unlabelled.pt")[2] == Finding("none", None)


def test_a_diverged_conditional_run_writes_its_batch_labels_into_the_capsule(tmp_path):
    """exp scale at lr 0.1 overflows within a few steps on this tiny model (measured)."""
    cfg = config(model={"scale": "exp", "conditioning": "class"}, train={"lr": 0.1})
    summary = train(cfg, tmp_path / "run", threads=1)
    assert summary["state"] == "diverged"
    (capsule,) = (RunDir(tmp_path / "run").path / "capsules").iterdir()
    labels = torch.load(capsule, weights_only=False)["labels"]
    assert labels.dtype == torch.long and labels.shape == (cfg.train.batch_size,) and set(labels.tolist()) <= {0, 1}
    step, recorded, replayed = replay_capsule(capsule)
    assert step == summary["first_nonfinite_step"] and replayed == recorded and replayed.phase != "none"
