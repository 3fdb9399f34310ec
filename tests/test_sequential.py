"""Group-sequential boundaries and the error rates of the whole verdict rule, checked against
closed forms, reference figures and simulation (docs/verdicts.md, "Adding seeds", "Error
rates, simulated")."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from glow_repro.analysis.boundaries import PATHS, Boundary, spent
from glow_repro.analysis.pair_tests import paired_tests, sign_flip_p
from glow_repro.analysis.sequential import SeedPlan
from glow_repro.analysis.verdicts import claim_verdict, judge_pairs

LOOKS = (4, 8, 12)
OBF = Boundary(LOOKS)


def test_spending_functions_match_their_closed_forms():
    assert spent(1.0, 0.05, "obrien-fleming") == pytest.approx(0.05)
    assert spent(1 / 3, 0.05, "obrien-fleming") == pytest.approx(2 * stats.norm.sf(1.959964 * math.sqrt(3)))
    assert spent(0.5, 0.05, "pocock") == pytest.approx(0.05 * math.log(1 + (math.e - 1) / 2))
    assert OBF.cumulative[-1] == pytest.approx(0.05) and Boundary((8,)).t_thresholds() == (0.05,)


def test_obrien_fleming_thresholds_match_the_reference_figures():
    """Reference (400,000 simulated paths): 0.0008 / 0.0163 / 0.0413 nominal two-sided p at
    4 / 8 / 12 seeds. The first look's threshold is exactly the alpha spent by it (the t-test
    alone is exact there): 0.00069."""
    first, second, third = OBF.t_thresholds()
    assert first == pytest.approx(OBF.cumulative[0], abs=3 / math.sqrt(PATHS) * 0.03)
    assert (first, second, third) == pytest.approx((0.0008, 0.0163, 0.0413), abs=6e-4)
    pocock = Boundary(LOOKS, spending="pocock").t_thresholds()
    assert pocock == pytest.approx((0.0205,) * 3, abs=3e-3)  # Lan-DeMets' Pocock type: near constant


@pytest.mark.slow
def test_the_simulated_boundary_has_its_size_on_fresh_paths():
    """Fresh null paths, judged look by look with scipy's t-test at the thresholds: the chance
    of ever crossing is alpha within simulation error, and each look spends what it should."""
    z = np.random.default_rng(123).standard_normal((200_000, LOOKS[-1]))
    alive, crossed = np.ones(len(z), dtype=bool), []
    for n, threshold in zip(LOOKS, OBF.t_thresholds()):
        reject = alive & (stats.ttest_1samp(z[:, :n], 0, axis=1).pvalue <= threshold)
        alive &= ~reject
        crossed.append(1 - alive.mean())
    error = 3 * math.sqrt(0.05 * 0.95 * (1 / len(z) + 1 / PATHS))  # these paths' and the boundary's own
    assert crossed == pytest.approx(list(OBF.cumulative), abs=error)


def test_increment_thresholds_never_spend_more_than_alpha():
    for spending in ("obrien-fleming", "pocock"):
        levels = Boundary((8, 16), spending=spending).increment_thresholds()
        assert sum(levels) == pytest.approx(0.05) and all(level > 0 for level in levels)


@pytest.mark.slow
def test_the_sign_flip_test_at_the_increments_rejects_a_true_null_at_most_alpha_over_its_looks():
    """Divergence claims judged at looks 8 and 16 (Pocock increments, as the scale study):
    simulated studies with no difference between the scales cross at either look at most
    alpha of the time."""
    scores = divergence_scores(0.4, 0.4, 16, np.random.default_rng(12))
    first, last = Boundary((8, 16), spending="pocock").increment_thresholds()
    crossed = (sign_flip_p(scores[:, :8]) <= first) | (sign_flip_p(scores) <= last)
    print(f"sign-flip at looks 8/16 under no difference: crossed in {crossed.mean():.4f}")
    assert crossed.mean() <= 0.05 + tolerance(0.05)


# --- the whole rule, simulated --------------------------------------------------------------

STUDIES = 4000
PAIRS = [(0, 1), (0, 2), (1, 2)]  # a three-value order claim within one coupling: better, worse


def simulate(means: np.ndarray, plan: SeedPlan, seed: int, min_effect: float | None = None) -> np.ndarray:
    """The final claim verdict of ``STUDIES`` studies run look by look: ``means`` is couplings
    x 3 variants (claimed order: first lowest); each run is a per-seed offset shared by every
    variant plus unit noise, so a coupling's three pair differences are correlated through
    the runs they share (-0.5 / +0.5). The building blocks are the verdict's own."""
    rng = np.random.default_rng(seed)
    means = np.atleast_2d(means)
    couplings = len(means)
    runs = rng.normal(0, 1, (STUDIES, 1, 1, plan.max_seeds)) + rng.normal(
        means[None, :, :, None], 1.0, (STUDIES, couplings, 3, plan.max_seeds)
    )
    diffs = np.stack([np.stack([runs[:, c, w] - runs[:, c, b] for b, w in PAIRS], axis=1) for c in range(couplings)],
                     axis=1).reshape(STUDIES, couplings * len(PAIRS), plan.max_seeds)  # fmt: skip
    final = np.full(STUDIES, "", dtype=object)
    active = np.ones(STUDIES, dtype=bool)
    for index, n in enumerate(plan.looks):
        levels = plan.look(index).levels("t", diffs.shape[1])
        *_, pair_verdict = judge_pairs(diffs[active, :, :n], "t", levels, min_effect)
        verdict = claim_verdict(pair_verdict)
        stop = (verdict != "inconclusive") | (index + 1 == len(plan.looks))
        stopped = np.flatnonzero(active)[stop]
        final[stopped], active[stopped] = verdict[stop], False
    assert not active.any()
    return final


def tolerance(rate: float) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / STUDIES)


PLAN = SeedPlan.extend(range(100, 104), max_seeds=12)  # looks at 4, 8, 12 seeds
HALF = PLAN.alpha / 2
STEP = math.sqrt(2)  # a standardised paired effect of 1: the SD of a paired difference is sqrt(2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, means",
    [
        ("complete null", [[0, 0, 0], [0, 0, 0]]),
        ("one null pair among true ones", [[0, 0, 4 * STEP], [0, 4 * STEP, 8 * STEP]]),
    ],
)
def test_each_directions_error_is_at_most_alpha_over_two(name, means):
    final = simulate(np.array(means, dtype=float), PLAN, seed=7)
    reproduced, contradicted = (final == "reproduced").mean(), (final == "contradicted").mean()
    print(f"{name}: false reproduced {reproduced:.4f}, false contradicted {contradicted:.4f} (limit {HALF})")
    assert reproduced <= HALF + tolerance(HALF) and contradicted <= HALF + tolerance(HALF)


@pytest.mark.slow
def test_power_at_a_standardised_effect_of_1_2_with_equally_spaced_variants():
    """Reference: 0.833 with O'Brien-Fleming + the intersection-union test, 0.561 with the
    former Bonferroni split + Holm, for 6 pairs (2 couplings x 3 equally spaced variants)."""
    step = 1.2 * STEP
    final = simulate(np.array([[0, step, 2 * step]] * 2), PLAN, seed=8)
    power = (final == "reproduced").mean()
    print(f"power at dz 1.2: {power:.3f}; contradicted {(final == 'contradicted').mean():.4f}")
    assert power >= 0.75 and (final == "contradicted").mean() <= 3 / STUDIES


@pytest.mark.slow
def test_absent_is_reached_for_a_true_zero_and_rarely_when_the_effect_is_min_effect():
    """min_effect = 1.5 SD of a paired difference. All pairs with no true effect: absent in
    most studies by 12 seeds. Every pair exactly at min_effect (the least favourable case for
    TOST): absent in at most alpha / 2."""
    min_effect = 1.5 * STEP
    zero = simulate(np.zeros((1, 3)), PLAN, seed=9, min_effect=min_effect)
    at_bound = simulate(np.array([[0, min_effect, 2 * min_effect]]), PLAN, seed=10, min_effect=min_effect)
    print(f"absent: {(zero == 'absent').mean():.3f} at zero, {(at_bound == 'absent').mean():.4f} at min_effect")
    assert (zero == "absent").mean() > 0.5
    assert (at_bound == "absent").mean() <= HALF + tolerance(HALF)


def divergence_scores(rate_exp: float, rate_sigmoid: float, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """Per-seed scores over 3 learning rates: share diverged with exp minus with sigmoid, with
    a seed effect that makes every run of a seed more (or less) likely to diverge."""
    frailty = rng.normal(0, 1.0, (STUDIES, seeds, 1))
    p_exp = stats.norm.cdf(stats.norm.ppf(rate_exp) + frailty)
    p_sig = stats.norm.cdf(stats.norm.ppf(rate_sigmoid) + frailty)
    exp = rng.random((STUDIES, seeds, 3)) < p_exp
    sigmoid = rng.random((STUDIES, seeds, 3)) < p_sig
    return exp.mean(axis=-1) - sigmoid.mean(axis=-1)


@pytest.mark.slow
def test_the_sign_flip_test_keeps_its_size_and_beats_the_sign_test():
    """Divergence claims: under no difference the exact sign-flip test rejects at most alpha;
    with exp more fragile, it rejects more often than the sign test on the same seeds."""
    rng = np.random.default_rng(11)
    null = divergence_scores(0.4, 0.4, 8, rng)
    size = (sign_flip_p(null) <= 0.05).mean()
    assert size <= 0.05 + tolerance(0.05)
    scores = divergence_scores(0.6, 0.15, 8, rng)
    flip = (paired_tests(scores, "sign-flip")[2] <= 0.05).mean()
    plus, minus = (scores > 0).sum(axis=1), (scores < 0).sum(axis=1)
    sign = np.mean([stats.binomtest(int(k), int(k + m)).pvalue <= 0.05 if k + m else False
                    for k, m in zip(plus, minus)])  # fmt: skip
    wilcoxon_size = (paired_tests(null, "wilcoxon")[2] <= 0.05).mean()
    wilcoxon = (paired_tests(scores, "wilcoxon")[2] <= 0.05).mean()
    print(f"sign-flip: size {size:.4f}, power {flip:.3f}; Wilcoxon: size {wilcoxon_size:.4f}, power {wilcoxon:.3f}; "
          f"sign test power {sign:.3f}")  # fmt: skip
    assert wilcoxon_size <= 0.05 + tolerance(0.05) and flip > sign
