"""Cell formatting for the human-readable tables (.md and the report page): fractions become percentages."""

from __future__ import annotations

import math

import pandas as pd

MISSING = "–"


def pct(x: float) -> str:
    """A fraction 0–1 as a percentage with one decimal, ``–`` when missing."""
    return MISSING if pd.isna(x) else f"{100 * x:.1f}"


def pct_ci(mean: float, low: float, high: float) -> str:
    """``mean (low–high)`` in percent; the interval is left out when it is missing (one seed)."""
    if pd.isna(low):
        return pct(mean)
    return f"{pct(mean)} ({pct(low)}–{pct(high)})"


def pp(x: float) -> str:
    """A difference of fractions as signed percentage points, ``–`` when missing."""
    return MISSING if pd.isna(x) else f"{100 * x:+.1f}"


def pp_ci(mean: float, low: float, high: float) -> str:
    """``+Δ (+low to +high)`` in percentage points (``to``: a dash is ambiguous next to signs)."""
    if pd.isna(low):
        return pp(mean)
    return f"{pp(mean)} ({pp(low)} to {pp(high)})"


def p_value(p: float) -> str:
    """A p-value with three decimals, ``<0.001`` below that, ``–`` when not computed."""
    if pd.isna(p):
        return MISSING
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def number(x: float, digits: int = 2) -> str:
    """A plain number (``inf`` as ``∞``), ``–`` when missing."""
    if pd.isna(x):
        return MISSING
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}f}"


def giga(x: float) -> str:
    """FLOPs as GFLOPs with one decimal."""
    return MISSING if pd.isna(x) else f"{x / 1e9:.1f}"
