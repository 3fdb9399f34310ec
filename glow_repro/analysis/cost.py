"""What a study costs at a given training throughput, and the seeds its claims need
(docs/cost.md).

Arithmetic on the study's expanded runs, no torch and no dataset files read: a run
trains ``train.steps`` steps, or ``train.epochs`` passes of the drop-last batches of its
training split (as ``train()`` counts them), of ``train.batch_size`` images each. At a
throughput of ``images_per_s`` per worker (one run training at a time: a GPU, or one worker of
``glow-repro run --workers``), a run costs its images / ``images_per_s`` device-seconds, and a
seed costs the sum over the study's variants (a seed is added to every variant). Evaluation,
sampling and start-up are not counted, and the throughput is taken as the same for every
variant: both are assumptions, stated in docs/cost.md with the measured error they bring.

With a claim's paired SD (bpd, from a pilot: docs/pilot.md), the seeds a fixed design needs
are those of the verdicts (docs/verdicts.md, "The smallest effect of interest"): 80 % power at
the claim's ``min_effect`` (its margin for a non-inferiority claim) at the threshold of the
last planned look of ``--until-resolved``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glow_repro.analysis.pair_tests import paired_t_power, seeds_needed_t
from glow_repro.analysis.sequential import SeedJudge, SeedPlan
from glow_repro.core.config import ConfigError, RunConfig
from glow_repro.core.datasets import train_images
from glow_repro.run.rundir import read_json
from glow_repro.study.spec import ClaimSpec, StudySpec, expand


@dataclass(frozen=True)
class VariantCost:
    """One variant's run: the steps it trains and the images each step takes."""

    variant: str
    steps: int
    batch_size: int
    budget: str  # how the steps follow from the config, in words

    @property
    def images(self) -> int:
        return self.steps * self.batch_size


def variant_cost(variant: str, config: RunConfig, where: str) -> VariantCost:
    """Steps and images of a run of ``config``, as ``train()`` counts them."""
    cfg = config.train
    n_images = train_images(config.data)
    batch = min(cfg.batch_size, n_images) if n_images else cfg.batch_size
    if cfg.steps:
        return VariantCost(variant, cfg.steps, batch, "train.steps")
    if n_images is None:
        raise ConfigError(
            f"{where}: train.epochs: the size of the {config.data.dataset} training set is known only once "
            "its files are read; give the budget as train.steps (--set train.steps=N) to plan it"
        )
    per_epoch = n_images // batch
    budget = f"train.epochs {cfg.epochs:g} x {per_epoch:,} batches of {n_images:,} training images"
    return VariantCost(variant, cfg.budget_steps(per_epoch), batch, budget)


@dataclass(frozen=True)
class ClaimNeed:
    """The seeds a claim needs, given the paired SD of its differences."""

    claim: ClaimSpec
    sd: float
    threshold: float  # the last planned look's two-sided p threshold
    seeds: float  # a fixed design at ``threshold``, 80 % power at ``claim.sizing_effect``; inf: over the cap
    look_power: tuple[float, ...]  # one pair's power at each planned look's own threshold

    @property
    def dz(self) -> float:
        return self.claim.sizing_effect / self.sd


@dataclass(frozen=True)
class StudyCost:
    """A study's runs per seed and planned looks, priced per seed."""

    spec: StudySpec
    variants: tuple[VariantCost, ...]
    plan: SeedPlan

    @property
    def images_per_seed(self) -> int:
        return sum(variant.images for variant in self.variants)

    def device_seconds(self, seeds: float, images_per_s: float) -> float:
        """Device-seconds of ``seeds`` seeds of every variant at ``images_per_s`` per worker."""
        return seeds * self.images_per_seed / images_per_s

    def need(self, claim: ClaimSpec, sd: float) -> ClaimNeed:
        thresholds = self.plan.boundary.thresholds(claim.test)
        dz = claim.sizing_effect / sd
        seeds = float(seeds_needed_t(np.array(dz), thresholds[-1]))
        power = paired_t_power(np.full(len(thresholds), dz), np.array(self.plan.looks), np.array(thresholds))
        return ClaimNeed(claim, sd, thresholds[-1], seeds, tuple(float(p) for p in power))


def study_cost(spec: StudySpec) -> StudyCost:
    """The cost of ``spec``'s variants (the runs of its first seed) and its looks as
    ``--until-resolved`` plans them (the study's ``max_seeds``, else 12)."""
    first = spec.seeds[0]
    variants = tuple(variant_cost(run.variant, run.config, spec.source) for run in expand(spec) if run.seed == first)
    return StudyCost(spec, variants, SeedJudge().plan(spec))


def parse_pilot_sd(texts: tuple[str, ...], spec: StudySpec) -> dict[str, float]:
    """``--pilot-sd CLAIM=SD`` values: each a claim of ``spec`` and a positive SD, once."""
    ids = [claim.id for claim in spec.claims]
    allowed = ", ".join(ids) or "none (the study declares no claims)"
    sds: dict[str, float] = {}
    for text in texts:
        claim, _, value = text.partition("=")
        claim = claim.strip()
        try:
            sd = float(value)
        except ValueError:
            sd = float("nan")
        if not np.isfinite(sd) or sd <= 0:
            raise ConfigError(f"--pilot-sd {text}: must be CLAIM=SD with a positive SD in the claim's units (bpd)")
        if claim not in ids:
            raise ConfigError(f"--pilot-sd {text}: {spec.source} has no claim {claim!r}; its claims: {allowed}")
        if claim in sds:
            raise ConfigError(f"--pilot-sd {text}: {claim} is given twice; give each claim's SD once")
        sds[claim] = sd
    return sds


def bench_throughput(path: Path) -> tuple[float, str]:
    """Training images/s from a ``glow-repro bench --json`` file, and what was measured."""
    remedy = "write it with glow-repro bench --json FILE"
    measured = read_json(path, default=None, expect=dict, remedy=remedy)
    if measured is None:
        raise ConfigError(f"--bench {path}: no such file; {remedy}")
    rate = measured.get("train_images_per_s")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ConfigError(f"--bench {path}: no positive train_images_per_s in it; {remedy}")
    threads = measured.get("threads")
    return float(
        rate
    ), f"{measured.get('model', 'a model')} on {measured.get('device', 'a device')} ({threads} threads)"


def hours_text(seconds: float) -> str:
    """A duration for a plan: minutes below an hour, hours below two days, then days."""
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
