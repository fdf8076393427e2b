"""Decisions: an arm against full fine-tuning, from the paired difference d (a record with its 95%
interval ``lo``/``hi`` and its 90% interval ``lo90``/``hi90``) and a margin δ.

*Equivalent* when the 90% interval lies inside (−δ, +δ) (two one-sided tests at 5%); otherwise
*worse*/*better* (*higher*/*lower* when the metric has no direction) when the 95% interval lies
wholly on one side of zero; otherwise *inconclusive*, with a rough count of the evaluation units or
training seeds that would settle it. The rank recommendation is the smallest rank equivalent on
every metric. The intervals themselves come from :mod:`lorafair.stats`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from lorafair.errors import UserError
from lorafair.stats import EQUIVALENCE_ALPHA


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
    """Roughly how many evaluation units, or training seeds, would make an inconclusive difference
    equivalent, assuming the true difference is the one observed and the variance components stay.

    Needs the record's ``components``, ``n_seeds``, ``n_units``. The 90% half-width must fall to
    δ − |d|; with z = 1.645, the target variance is ((δ − |d|)/z)². Units: with S fixed,
    U' = (σ²_unit + σ²_inter/S) / (target − σ²_seed/S); seeds: with U fixed,
    S' = (σ²_seed + σ²_inter/U) / (target − σ²_unit/U). None where the observed |d| ≥ δ (more data
    would not show equivalence) or nothing can be said; a count is None when that route alone
    cannot reach the target."""
    comp, S, U = diff.get("components") or {}, diff.get("n_seeds"), diff.get("n_units")
    d = diff.get("value")
    if not (_finite(d) and S and U) or abs(d) >= margin:
        return None
    target = ((margin - abs(d)) / sps.norm.ppf(1 - EQUIVALENCE_ALPHA / 2)) ** 2
    seed, unit, inter = (comp.get(k) for k in ("seed", "unit", "inter"))
    out: dict = {"units": None, "seeds": None, "n_units": int(U), "n_seeds": int(S)}
    if unit is None:
        return out
    if seed is None:  # one seed: the per-unit variance is all we know
        out["units"] = int(np.ceil(unit / target))
        return out
    if target > seed / S:
        out["units"] = int(np.ceil((unit + inter / S) / (target - seed / S)))
    if target > unit / U:
        out["seeds"] = int(np.ceil((seed + inter / U) / (target - unit / U)))
    return out


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
