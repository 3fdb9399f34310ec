"""A verdict per claim of a study: reproduced, contradicted, absent or inconclusive
(docs/verdicts.md).

A claim (:class:`glow_repro.study.spec.ClaimSpec`) orders values of one swept key. It implies
one *pair* (claimed-better, claimed-worse) for every two values of its order, at every
combination of its ``within`` keys' values. Each pair is tested on seed-matched differences d
(a seed fixes the initialisation, the data order and the dequantisation noise across variants);
swept keys in neither ``key`` nor ``within`` are averaged within each seed, so the seed stays
the unit. ``kind: order``: d = metric(worse) - metric(better) in bits per dimension, paired
t-test; ``kind: divergence``: d = the share of the pooled settings at which the worse value
diverged minus the share at which the better one did, exact sign-flip test (or Wilcoxon).
An order claim with a ``margin`` m tests d + m (non-inferiority).

A verdict is taken at a :class:`Look` of a planned :class:`~glow_repro.analysis.boundaries.Boundary`
(one look at alpha for a study run once). With ``c(a)`` that look's nominal two-sided threshold
at overall level ``a`` and ``m`` pairs, each pair is:

- **reproduced**: p <= c(alpha) in the claimed direction; the claim is reproduced when every
  pair is (an intersection-union test: no correction, false "reproduced" at most alpha / 2);
- **contradicted**: rejected against the claim by Holm's step-down method with the levels
  c(alpha / m), c(alpha / (m - 1)), ... (false "contradicted" at most alpha / 2);
- **absent** (order claims without a margin): both one-sided t-tests of |effect| <
  ``min_effect`` (TOST) reject, by the same Holm steps on one-sided levels c / 2 (false
  "absent", when the true effect is at least ``min_effect``, at most alpha / 2);
- **open** otherwise.

The claim is contradicted if any pair is, inconclusive if any pair is open, absent if any is
absent, and reproduced otherwise. Intervals are at the level ``1 - c(alpha)`` the pairs are
judged at. ``seeds_needed`` is what a fixed design at the next look's level would need for
80 % power at ``min_effect`` (at the margin, for a non-inferiority claim: sized at zero true
difference), from the observed SD; ``seeds_needed_observed`` is the same at the observed effect,
a figure that only restates p.

Pure functions of the long tables of :mod:`glow_repro.study.tables`; no torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from glow_repro.analysis.boundaries import Boundary
from glow_repro.analysis.pair_tests import (
    MAX_SEEDS_NEEDED,
    detectable_dz,
    equivalence_p,
    paired_tests,
    seeds_needed_t,
    step_down,
    t_interval,
)
from glow_repro.run.rundir import RunState
from glow_repro.study.labels import describe, format_value
from glow_repro.study.spec import CLAIM_METRICS, ClaimSpec
from glow_repro.study.tables import Tables

ALPHA = 0.05
COLUMNS = [
    "claim", "source", "kind", "metric", "verdict", "pair_verdict", "within", "pair", "margin", "min_effect",
    "effect", "sd", "ci_low", "ci_high", "level", "p", "threshold", "significant", "p_equivalence", "seeds",
    "look", "boundary", "alpha", "mde", "seeds_needed", "seeds_needed_observed",
]  # fmt: skip


@dataclass(frozen=True)
class Look:
    """Where a verdict is taken: look ``index`` (from 0) of ``boundary``."""

    boundary: Boundary
    index: int = 0

    @classmethod
    def fixed(cls, seeds: int, alpha: float = ALPHA) -> Look:
        """The one look of a study run once, at its seeds."""
        return cls(Boundary((max(int(seeds), 1),), alpha))

    def levels(self, test: str, pairs: int) -> np.ndarray:
        """``levels[j - 1]``: this look's threshold at alpha / j (Holm with j pairs left)."""
        return np.array([self.boundary.scaled(1 / j).thresholds(test)[self.index] for j in range(1, pairs + 1)])

    def next_threshold(self, test: str) -> float:
        """The threshold (at alpha) of the look after this one, or of this one if it is the last."""
        return self.boundary.thresholds(test)[min(self.index + 1, len(self.boundary.looks) - 1)]


def judge_pairs(
    d: np.ndarray, test: str, levels: np.ndarray, min_effect: float | None, margin: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rule of the module docstring on differences ``d`` (pairs on the second-to-last
    axis, seeds on the last; NaN: a missing seed): ``(shifted effect, sd, p, p_equivalence,
    pair verdict)`` per pair. Vectorised over leading axes, so simulations use it as is."""
    effect, sd, p = paired_tests(d + margin, test)
    reproduced = (p <= levels[0]) & (effect > 0)
    contradicted = step_down(p, levels) & (effect < 0)
    if min_effect and not margin and test == "t":
        p_eq = equivalence_p(d, min_effect)
        absent = step_down(2 * p_eq, levels) & ~reproduced & ~contradicted
    else:
        p_eq = np.full(p.shape, np.nan)
        absent = np.zeros(p.shape, dtype=bool)
    verdict = np.select([reproduced, contradicted, absent], ["reproduced", "contradicted", "absent"], "open")
    return effect, sd, p, p_eq, verdict


def claim_verdict(pair_verdict: np.ndarray) -> np.ndarray:
    """The claim's verdict from its pairs' (last axis)."""
    pair_verdict = np.asarray(pair_verdict)
    return np.select(
        [(pair_verdict == "contradicted").any(axis=-1), (pair_verdict == "open").any(axis=-1),
         (pair_verdict == "absent").any(axis=-1)],
        ["contradicted", "inconclusive", "absent"], "reproduced",
    )  # fmt: skip


def claims_of(study: dict[str, Any]) -> list[ClaimSpec]:
    """The claims of a parsed ``study.yaml`` (validated when the study was loaded)."""
    return [ClaimSpec.model_validate(raw) for raw in study.get("claims") or []]


def study_verdicts(tables: Tables, look: Look | None = None) -> pd.DataFrame:
    """:func:`verdicts` of the claims in the tables' ``study.yaml``."""
    return verdicts(tables.finals, tables.evals, claims_of(tables.study), tables.swept, look)


def metric_alternatives(tables: Tables, look: Look | None = None) -> pd.DataFrame:
    """Every ``order`` claim of the study judged again under each metric (docs/verdicts.md,
    "Metrics"): its verdict, pairs resolved and median paired SD; ``declared`` marks the
    claim's own metric."""
    rows = []
    for claim in claims_of(tables.study):
        if claim.kind != "order":
            continue
        for metric in CLAIM_METRICS:
            table = verdicts(tables.finals, tables.evals, [claim.model_copy(update={"metric": metric})],
                             tables.swept, look)  # fmt: skip
            if table.empty:
                continue
            summary = claim_summary(table).iloc[0]
            rows.append({
                "claim": claim.id, "metric": metric, "declared": metric == claim.metric, "verdict": summary["verdict"],
                "resolved": f"{summary['resolved']} / {summary['pairs']}", "median_sd": float(table["sd"].median()),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=["claim", "metric", "declared", "verdict", "resolved", "median_sd"])


def run_metric(finals: pd.DataFrame, evals: pd.DataFrame, claim: ClaimSpec) -> pd.Series:
    """The claim's per-run value, indexed like ``finals``; NaN where the run does not count."""
    state = finals["state"]
    if claim.kind == "divergence":
        return (state == RunState.DIVERGED).astype(float).where(state.isin([RunState.DONE, RunState.DIVERGED]))
    if claim.metric == "mean_test_bpd_of_last_evals":
        tail = evals.dropna(subset=["test_bpd"]).sort_values("step").groupby("run_id").tail(claim.last_evals)
        value = finals["run_id"].map(tail.groupby("run_id")["test_bpd"].mean())
    else:
        value = pd.to_numeric(finals[claim.metric], errors="coerce")
    return value.astype(float).where((state == RunState.DONE) & np.isfinite(value.astype(float)))


def seed_differences(
    finals: pd.DataFrame, value: pd.Series, key: str, better: Any, worse: Any, pooled: Sequence[str]
) -> pd.Series:
    """value(worse) - value(better) per seed, matched on the ``pooled`` keys and averaged
    over them; seeds missing either side are left out (all of them when the tables hold
    one value of ``key`` only, e.g. after ``--only``)."""
    if key not in finals:
        return pd.Series(dtype=float)
    label = finals[key].map(format_value)
    frame = finals.assign(_value=value, _side=label.map({format_value(better): "better", format_value(worse): "worse"}))
    frame = frame.dropna(subset=["_side"])
    index = ["seed", *pooled]
    wide = frame.pivot_table(index=index, columns="_side", values="_value", aggfunc="mean", dropna=False)
    if not {"better", "worse"} <= set(wide.columns):
        return pd.Series(dtype=float)
    diff = (wide["worse"] - wide["better"]).dropna()
    return diff.groupby(level="seed").mean()


def _power_columns(
    claim: ClaimSpec, d: np.ndarray, shifted: float, sd: float, look: Look, open_pair: bool
) -> tuple[float, float, float]:
    """(mde, seeds_needed, seeds_needed_observed) of one pair: the smallest effect this look
    detects with 80 % power, and for an open pair the seeds a fixed design at the next look's
    level needs at ``min_effect`` (the margin for a non-inferiority claim) and at the
    observed effect."""
    n = int(np.isfinite(d).sum())
    threshold = look.levels(claim.test, 1)[0]
    mde = detectable_dz(n, threshold) * sd if sd > 0 else np.nan
    if not open_pair or n < 2:
        return mde, np.nan, np.nan
    if not sd > 0:
        return mde, np.inf, np.inf
    needed = seeds_needed_t(np.array([claim.sizing_effect / sd, abs(shifted) / sd]), look.next_threshold(claim.test))
    return mde, float(needed[0]), float(needed[1])


def claim_pairs(finals: pd.DataFrame, claim: ClaimSpec):
    """``(within label, better, worse, within filter)`` for every pair the claim implies."""
    within = [key for key in claim.within if key in finals]
    levels = [list(dict.fromkeys(finals[key].map(format_value))) for key in within]
    for point in itertools.product(*levels):
        mask = np.ones(len(finals), dtype=bool)
        for key, level in zip(within, point):
            mask &= (finals[key].map(format_value) == level).to_numpy()
        for better, worse in itertools.combinations(claim.order, 2):
            yield describe(dict(zip(within, point))) if within else "all", better, worse, mask


def verdicts(
    finals: pd.DataFrame,
    evals: pd.DataFrame,
    claims: Sequence[ClaimSpec],
    swept: Sequence[str],
    look: Look | None = None,
) -> pd.DataFrame:
    """One row per pair of every claim (columns :data:`COLUMNS`), the claim's verdict on each
    of its rows, at ``look`` (default: one look at the seeds present); see the module docstring."""
    rows: list[dict[str, Any]] = []
    if look is None:
        look = Look.fixed(finals["seed"].nunique() if len(finals) else 1)
    for claim in claims:
        value = run_metric(finals, evals, claim)
        pooled = [key for key in swept if key in finals and key != claim.key and key not in claim.within]
        pairs = []
        for within, better, worse, mask in claim_pairs(finals, claim):
            d = seed_differences(finals[mask], value[mask], claim.key, better, worse, pooled).to_numpy(float)
            pairs.append((within, better, worse, d))
        if not pairs:
            continue
        width = max(len(d) for *_, d in pairs)
        padded = np.full((len(pairs), max(width, 1)), np.nan)
        for row, (*_, d) in enumerate(pairs):
            padded[row, : len(d)] = d
        margin = claim.margin or 0.0
        levels = look.levels(claim.test, len(pairs))
        shifted, sd, p, p_eq, pair_verdict = judge_pairs(padded, claim.test, levels, claim.smallest_effect, margin)
        verdict = str(claim_verdict(pair_verdict))
        for (within, better, worse, d), e, s, pv, pe, pair in zip(pairs, shifted, sd, p, p_eq, pair_verdict):
            low, high = t_interval(d, 1 - levels[0])
            mde, needed, observed = _power_columns(claim, d, float(e), float(s), look, pair == "open")
            rows.append({
                "claim": claim.id, "source": claim.source, "kind": claim.kind,
                "metric": "diverged" if claim.kind == "divergence" else claim.metric,
                "verdict": verdict, "pair_verdict": str(pair), "within": within,
                "pair": pair_text(better, worse, claim.margin), "margin": margin, "min_effect": claim.sizing_effect,
                "effect": e - margin, "sd": s, "ci_low": low, "ci_high": high, "level": 1 - levels[0],
                "p": pv, "threshold": levels[0], "significant": pair in ("reproduced", "contradicted"),
                "p_equivalence": pe, "seeds": len(d), "look": look.index + 1, "boundary": look.boundary.describe(),
                "alpha": look.boundary.alpha, "mde": mde, "seeds_needed": needed, "seeds_needed_observed": observed,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def pair_text(better: Any, worse: Any, margin: float | None = None) -> str:
    """``better < worse``, or ``better < worse + margin`` for a claim with a margin."""
    return f"{format_value(better)} < {format_value(worse)}" + (f" + {margin:g}" if margin else "")


def shifted_effect(table: pd.DataFrame) -> pd.Series:
    """Each pair's effect against its claim's margin: positive where the data favour the claim."""
    return table["effect"] + table["margin"]


def number(value: float, digits: int = 3) -> str:
    """A statistic as text: ``-`` when missing, three significant digits when tiny."""
    return "-" if pd.isna(value) else f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"


def seeds_text(value: float) -> str:
    """A seeds-needed estimate as text: ``-`` when there is none, ``more than N`` beyond the cap."""
    if pd.isna(value):
        return "-"
    return f"more than {MAX_SEEDS_NEEDED}" if np.isinf(value) else str(int(value))


def level_text(level: float) -> str:
    """A confidence level as a percentage to four significant digits (95 %, 98.75 %, 99.93 %)."""
    return f"{100 * float(level):.4g} %" if pd.notna(level) else "-"


def outcome_text(pairs: pd.DataFrame) -> str:
    """A claim's pairs in one line: ``5 of 6 pairs reproduced; 1 absent (additive: shuffle <
    reverse)``; pairs other than reproduced are named."""
    counts = pairs["pair_verdict"].value_counts()
    reproduced = int(counts.get("reproduced", 0))
    parts = [f"{reproduced} of {len(pairs)} pair{'s' * (len(pairs) != 1)} reproduced"]
    for kind in ("contradicted", "absent", "open"):
        rows = pairs[pairs["pair_verdict"] == kind]
        if len(rows):
            names = ", ".join(r.pair if r.within == "all" else f"{r.within}: {r.pair}" for r in rows.itertuples())
            parts.append(f"{len(rows)} {kind} ({names})")
    return "; ".join(parts)


SUMMARY_COLUMNS = [
    "claim", "source", "verdict", "outcome", "metric", "resolved", "pairs", "weakest", "effect", "ci_low",
    "ci_high", "level", "p", "threshold", "min_effect", "seeds", "seeds_needed", "boundary",
]  # fmt: skip


def claim_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per claim of a :func:`verdicts` table (columns :data:`SUMMARY_COLUMNS`): its
    verdict and one-line outcome, how many pairs are reproduced, the weakest pair (an open or
    contradicting one with the highest p, else the smallest effect) with its interval and p,
    the fewest seeds of any pair, and the most seeds an open pair needs at ``min_effect``."""
    rows = []
    for claim, pairs in table.groupby("claim", sort=False):
        unresolved = pairs[pairs["pair_verdict"] != "reproduced"]
        weakest = (unresolved.sort_values("p", ascending=False, na_position="first").iloc[0] if len(unresolved)
                   else pairs.loc[shifted_effect(pairs).idxmin()])  # fmt: skip
        open_pairs = pairs[pairs["pair_verdict"] == "open"]
        rows.append({
            "claim": claim, "source": pairs["source"].iloc[0], "verdict": pairs["verdict"].iloc[0],
            "outcome": outcome_text(pairs), "metric": pairs["metric"].iloc[0],
            "resolved": int((pairs["pair_verdict"] == "reproduced").sum()), "pairs": len(pairs),
            "weakest": f"{weakest['pair']} ({weakest['within']})" if weakest["within"] != "all" else weakest["pair"],
            "effect": weakest["effect"], "ci_low": weakest["ci_low"], "ci_high": weakest["ci_high"],
            "level": weakest["level"], "p": weakest["p"], "threshold": weakest["threshold"],
            "min_effect": pairs["min_effect"].iloc[0], "seeds": int(pairs["seeds"].min()),
            "seeds_needed": open_pairs["seeds_needed"].max() if len(open_pairs) else np.nan,
            "boundary": pairs["boundary"].iloc[0],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def format_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """The verdict table as text for people: each pair's verdict, effect with its interval at
    the decision level, p against the look's threshold, seeds needed at ``min_effect``."""
    return pd.DataFrame({
        "claim": table["claim"], "verdict": table["verdict"], "within": table["within"],
        "pair": table["pair"], "pair verdict": table["pair_verdict"],
        "effect [CI]": [f"{number(e)} [{number(lo)}, {number(hi)}]"
                        for e, lo, hi in zip(table["effect"], table["ci_low"], table["ci_high"])],
        "CI level": table["level"].map(level_text),
        "p": table["p"].map(number), "threshold": table["threshold"].map(number),
        "seeds": table["seeds"].astype(str), "mde": table["mde"].map(number),
        "seeds_needed": table["seeds_needed"].map(seeds_text), "metric": table["metric"],
    })  # fmt: skip
