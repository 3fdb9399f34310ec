"""Numbers as the report prints them: bits per dimension to three decimals, a mean with its
interval, p-values; ``n/a`` for what is missing (docs/architecture.md)."""

from __future__ import annotations

import numpy as np


def is_number(value: object) -> bool:
    """A finite number (not None, NaN or infinite): what the report can print as one."""
    return isinstance(value, (int, float, np.number)) and bool(np.isfinite(value))


def bpd(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if is_number(value) else "n/a"


def with_ci(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``3.123 [3.100, 3.146]``, or just the mean when there is no interval."""
    if not is_number(low):
        return bpd(mean, digits)
    return f"{bpd(mean, digits)} [{bpd(low, digits)}, {bpd(high, digits)}]"


def p_text(p: float) -> str:
    if not is_number(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_clause(p: float) -> str:
    """``p < 0.001`` or ``p = 0.032`` for running text."""
    text = p_text(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"
