"""Decisions: an arm against full fine-tuning, from the paired difference d (a record with its 95%
interval ``lo``/``hi`` and its 90% interval ``lo90``/``hi90``) and a margin δ.

*Equivalent* when the 90% interval lies inside (−δ, +δ) (two one-sided tests at 5%); otherwise
*worse*/*better* (*higher*/*lower* when the metric has no direction) when the 95% interval lies
wholly on one side of zero; otherwise *inconclusive*, with a rough count of the evaluation units or
training seeds that would settle it. The rank recommendation is the smallest rank equivalent on
every metric. The intervals themselves come from :mod:`lorafair.stats.intervals`.
"""

from __future__ import annotations

import numpy as np

from lorafair.errors import UserError
from lorafair.stats.intervals import EQUIVALENCE_ALPHA, half_width


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and np.isfinite(x) for x in xs)


def decide(diff: dict, margin: float, higher_is_better: bool | None = None) -> dict:
    """The decision for one arm − full difference record against margin δ > 0.

    - ``equivalent``: the 90% interval [lo90, hi90] lies inside (−δ, +δ);
    - ``better``/``worse`` (``higher``/``lower`` when the direction is unknown): the 95% interval
      [lo, hi] excludes zero; ``beyond_margin`` says whether it also excludes ±δ on that side
      (the difference is larger than δ with 95% confidence);
    - ``inconclusive``: neither; ``undefined`` without finite intervals.
    Equivalence is checked first: a tiny but clearly non-zero difference inside the margin is
    equivalent. Returns ``{decision, margin, beyond_margin}``."""
    if not margin > 0:
        raise UserError(f"margin {margin!r}: an equivalence margin must be a positive number")
    lo, hi = diff.get("lo"), diff.get("hi")
    lo90, hi90 = diff.get("lo90", lo), diff.get("hi90", hi)
    out = {"decision": "undefined", "margin": float(margin), "beyond_margin": None}
    if not _finite(lo, hi, lo90, hi90):
        return out
    if -margin < lo90 and hi90 < margin:
        out["decision"] = "equivalent"
    elif lo > 0 or hi < 0:
        up = lo > 0
        word = "higher" if up else "lower"
        if higher_is_better is not None:
            word = "better" if up == bool(higher_is_better) else "worse"
        out.update(decision=word, beyond_margin=bool(lo > margin if up else hi < -margin))
    else:
        out["decision"] = "inconclusive"
    return out


def more_data(diff: dict, margin: float) -> dict | None:
    """Roughly how many evaluation units (seeds as now), or training seeds (units as now), would
    settle an inconclusive difference, assuming the observed difference and variance components stay.

    Where |d| < δ the goal is ``equivalent``: the 90% interval within ±δ, i.e. its half-width below
    δ − |d|; where |d| ≥ δ it is ``non-zero``: the 95% interval clear of zero, half-width below |d|.
    The half-width is the one :mod:`lorafair.stats.intervals` computes, at the new counts:
    sqrt(t²_{S−1}·(σ²_seed + σ²_inter/U)/S + t²_{U−1}·σ²_unit/U), each part at its Student-t
    quantile, so with three seeds the seed part weighs t²₂ = 18.5, not z² = 3.8. Needs the record's
    ``components``, ``n_seeds``, ``n_units``; with one seed only the unit route is known. A count is
    None when that route alone cannot reach the goal (within 10⁷ units or 10⁴ seeds); the whole
    answer None when nothing can be said."""
    comp, S, U = diff.get("components") or {}, diff.get("n_seeds"), diff.get("n_units")
    d = diff.get("value")
    if not (_finite(d) and S and U and margin > 0):
        return None
    goal = "equivalent" if abs(d) < margin else "non-zero"
    target = margin - abs(d) if goal == "equivalent" else abs(d)
    alpha = EQUIVALENCE_ALPHA if goal == "equivalent" else 0.05
    seed, unit, inter = (comp.get(k) for k in ("seed", "unit", "inter"))
    out: dict = {"units": None, "seeds": None, "n_units": int(U), "n_seeds": int(S), "goal": goal}
    if not _finite(unit):
        return out
    one_seed = not (_finite(seed) and _finite(inter))

    def width(s: int, u: int) -> float:
        v_seed = 0.0 if one_seed else (seed + inter / u) / s
        return float(half_width({"v_seed": v_seed, "df_seed": 0 if one_seed else s - 1,
                                 "v_unit": unit / u, "df_unit": u - 1}, alpha))

    out["units"] = _smallest(lambda u: width(int(S), u) < target, 2, 10**7)
    if not one_seed:
        out["seeds"] = _smallest(lambda s: width(s, int(U)) < target, 2, 10**4)
    return out


def _smallest(ok, lo: int, limit: int) -> int | None:
    """The smallest n in [lo, limit] with ok(n), for ok false then true as n grows; None if none."""
    if not ok(limit):
        return None
    hi = lo
    while not ok(hi):
        lo, hi = hi, min(2 * hi, limit)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return hi


def margin_for(metric: str, margins: dict[str, float]) -> float | None:
    """The margin of ``metric``: its own entry, else the longest key ``k`` with ``metric`` starting
    ``k + "_"`` (``accuracy_disparity`` covers ``accuracy_disparity_race``); None when absent."""
    if metric in margins:
        return float(margins[metric])
    keys = [k for k in margins if metric.startswith(k + "_")]
    return float(margins[max(keys, key=len)]) if keys else None


def decide_all(minus_full: dict[str, dict[str, dict]], margins: dict[str, float]
               ) -> dict[str, dict[str, dict]]:
    """Every arm − full difference decided against its margin.

    minus_full: arm -> metric -> difference record (with ``higher_is_better`` where known).
    Returns arm -> metric -> ``{decision, margin, beyond_margin, value, lo, hi, lo90, hi90,
    n_seeds, n_units, more_data}`` (``more_data`` from :func:`more_data` for an inconclusive one);
    a metric without a margin gets ``decision: "no margin"``."""
    out: dict[str, dict[str, dict]] = {}
    for arm, recs in minus_full.items():
        for metric, r in (recs or {}).items():
            if not (isinstance(r, dict) and isinstance(r.get("value"), (int, float))):
                continue
            delta = margin_for(metric, margins)
            keep = {k: r.get(k) for k in ("value", "lo", "hi", "lo90", "hi90", "n_seeds", "n_units")}
            if delta is None:
                d = {"decision": "no margin", "margin": None, "beyond_margin": None}
            else:
                d = decide(r, delta, r.get("higher_is_better"))
                if d["decision"] == "inconclusive":
                    d["more_data"] = more_data(r, delta)
            out.setdefault(arm, {})[metric] = {**d, **keep}
    return out


def rank_recommendation(decisions: dict[str, dict[str, dict]], ranks: dict[str, int],
                        metrics: list[str]) -> int | None:
    """Smallest rank whose arm is *equivalent* to full on every one of ``metrics``; None when no
    arm is ("none established").

    decisions: arm -> metric -> :func:`decide` output; ranks: arm -> rank (arms of one variant)."""
    for arm in sorted(ranks, key=ranks.get):
        got = decisions.get(arm) or {}
        if metrics and all((got.get(m) or {}).get("decision") == "equivalent" for m in metrics):
            return ranks[arm]
    return None
