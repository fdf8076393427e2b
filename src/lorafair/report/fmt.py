"""How numbers and records read: the one formatter of the report, the verdict and the console.

A record ``{value, lo, hi}`` reads ``0.120 [0.090, 0.150]`` in tables (:func:`bracket`) and
``0.120 (95% CI 0.090–0.150)`` in sentences (:func:`value_ci`); the three numbers share one precision
(three decimals, or two significant digits below 0.01).
"""

from __future__ import annotations

import math
from typing import Any

from lorafair.stats.results import finite


def places(*xs: Any) -> int:
    """Decimals for the largest finite magnitude among ``xs``: three, or two significant digits below 0.01."""
    mags = [abs(float(x)) for x in xs if finite(x) and x != 0]
    if not mags:
        return 3
    return int(min(6, max(3, 1 - math.floor(math.log10(max(mags))))))


def num(x: Any, signed: bool = False, decimals: int | None = None) -> str:
    """A number at ``decimals`` places (three significant digits by default); '+' on positive
    differences when ``signed``; zero is always "0"; "n/a" when not finite."""
    if not finite(x):
        return "n/a"
    x = float(x)
    d = places(x) if decimals is None else decimals
    s = f"{x:.{d}f}"
    if float(s) == 0:
        return "0"
    return f"+{s}" if signed and x > 0 else s


def value_ci(rec: dict, signed: bool = False, label: str = "95% CI ") -> str:
    """``"0.120 (95% CI 0.090–0.150)"``; bounds below zero are joined by "to" so a minus sign is
    never read as a dash."""
    v, lo, hi = rec.get("value"), rec.get("lo"), rec.get("hi")
    d = places(v, lo, hi)
    if not (finite(lo) and finite(hi)):
        return f"{num(v, signed, d)} (no interval)"
    sep = " to " if min(lo, hi) < 0 else "–"
    return f"{num(v, signed, d)} ({label}{num(lo, signed, d)}{sep}{num(hi, signed, d)})"


def bracket(rec: dict | None, signed: bool = False) -> str:
    """``"0.120 [0.090, 0.150]"`` for a table cell; "-" without a value."""
    if not rec or rec.get("value") is None:
        return "-"
    v, lo, hi = rec.get("value"), rec.get("lo"), rec.get("hi")
    d = places(v, lo, hi)
    if lo is None or hi is None:
        return num(v, signed, d)
    return f"{num(v, signed, d)} [{num(lo, signed, d)}, {num(hi, signed, d)}]"


def cell(v: object) -> str:
    """A table cell of any value: numbers by :func:`num`, a summary ``{mean, ...}`` by its mean."""
    if isinstance(v, bool) or not isinstance(v, (int, float, dict)):
        return str(v)
    if isinstance(v, dict):
        return num(v["mean"]) if "mean" in v else str(v)
    return num(v) if isinstance(v, float) else str(v)
