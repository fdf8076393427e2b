"""Decisions: an arm against full fine-tuning, from the paired difference d (a record with its 95%
interval ``lo``/``hi`` and its 90% interval ``lo90``/``hi90``) and a margin δ.

The decision logic lives here and nowhere else; its confidence levels are parameters (``level`` for
"non-zero", ``eq_level`` for "equivalent"), so a sequential procedure can call it with adjusted
levels per look. In order:

1. ``no verdict: did not fit (<reason>)`` — the arm failed the fit gate (:mod:`lorafair.stats.fit`);
2. ``uninformative (floor)`` — a rate with fewer than ``FLOOR_EVENTS`` events in both arms, or a
   rate gap between groups whose record is marked ``floor`` (a group with too few expected events in
   both arms; :func:`at_floor`): its interval says nothing about the rate;
3. *equivalent* when the ``eq_level`` interval lies inside (−δ, +δ) (two one-sided tests);
   *worse*/*better* (*higher*/*lower* without a direction) when the difference is non-zero at
   ``level`` — for a primary metric, its Holm-adjusted p-value below 1 − level (:func:`holm`); a
   difference that is both is *worse, within δ* / *better, within δ*;
4. *inconclusive* otherwise, with a rough count of evaluation units or training seeds that would
   settle it. The rank recommendation is the smallest fitted rank equivalent on every primary metric.

The intervals themselves come from :mod:`lorafair.stats.intervals`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from lorafair.errors import UserError
from lorafair.stats.intervals import EQUIVALENCE_ALPHA, half_width

LEVEL = 0.95  # "non-zero": the 95% interval excludes 0
EQ_LEVEL = 1 - EQUIVALENCE_ALPHA  # "equivalent": the 90% interval inside ±δ (two one-sided tests at 5%)
FLOOR_EVENTS = 5  # a rate with fewer events than this in both arms is at the floor
GAP_FLOOR_KEYS = ("floor", "expected_events", "min_group_events")  # a gap's floor (stats.metrics.gap_floor)
EQUIVALENT, INCONCLUSIVE, FLOOR = "equivalent", "inconclusive", "uninformative (floor)"
NO_FIT = "no verdict: did not fit"
WITHIN = ", within δ"
NONZERO = ("worse", "better", "higher", "lower")
# every decision word, for readers (colours, counts): the first part of a decision before " ("
DECISIONS = (EQUIVALENT, *NONZERO, *(w + WITHIN for w in NONZERO), INCONCLUSIVE, FLOOR, NO_FIT,
             "undefined", "no margin")


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in xs)


def _parts(diff: dict) -> dict | None:
    """The two variance parts of a crossed record: its ``parts``, else rebuilt from its components
    (wider where the seed component was truncated at 0); None: not a crossed record."""
    parts = diff.get("parts") or {}
    if _finite(parts.get("v_seed"), parts.get("v_unit")) and "df_seed" in parts and "df_unit" in parts:
        return parts
    comp, S, U = diff.get("components") or {}, diff.get("n_seeds"), diff.get("n_units")
    if not (S and U and _finite(comp.get("unit"))):
        return None
    if S == 1 or not _finite(comp.get("seed"), comp.get("inter")):
        return {"v_seed": 0.0, "df_seed": 0, "v_unit": comp["unit"] / U, "df_unit": U - 1}
    return {"v_seed": (comp["seed"] + comp["inter"] / U) / S, "df_seed": S - 1,
            "v_unit": comp["unit"] / U, "df_unit": U - 1}


def _width(parts: dict, alpha: float) -> float:
    """:func:`~lorafair.stats.intervals.half_width` with upper-tail quantiles, accurate for tiny alpha."""
    def part(v, df):
        if df < 1 or v <= 0:
            return 0.0
        q = float(sps.t.isf(alpha / 2, df))
        return math.inf if q > 1e150 else q * q * v

    return math.sqrt(part(parts["v_seed"], parts["df_seed"]) + part(parts["v_unit"], parts["df_unit"]))


def interval_at(diff: dict, level: float) -> tuple[float, float] | None:
    """The ``level`` interval of a difference record: the stored one at 95% (``lo``/``hi``) or 90%
    (``lo90``/``hi90``); at another level, rebuilt from a crossed record's variance components, or
    else a normal interval with the standard error the 95% interval implies. None: not finite."""
    d = diff.get("value")
    for lvl, keys in ((LEVEL, ("lo", "hi")), (EQ_LEVEL, ("lo90", "hi90"))):
        if math.isclose(level, lvl, abs_tol=1e-12):
            lo, hi = diff.get(keys[0]), diff.get(keys[1])
            return (float(lo), float(hi)) if _finite(lo, hi) else None
    if not _finite(d):
        return None
    parts = _parts(diff)
    if parts is not None:
        hw = float(half_width(parts, 1 - level))
    elif _finite(diff.get("lo"), diff.get("hi")):
        hw = (diff["hi"] - diff["lo"]) / (2 * sps.norm.ppf(0.975)) * sps.norm.ppf(0.5 + level / 2)
    else:
        return None
    return d - hw, d + hw


def p_value(diff: dict) -> float | None:
    """Two-sided p-value of "arm − full = 0", consistent with the record's intervals: its own
    ``p_value`` when it carries one (a bootstrap record); for a crossed record the level at which
    the crossed interval touches 0; else a normal approximation from the 95% interval."""
    if _finite(diff.get("p_value")):
        return float(diff["p_value"])
    d = diff.get("value")
    if not _finite(d):
        return None
    parts = _parts(diff)
    if parts is not None:
        if abs(d) == 0:
            return 1.0
        if _width(parts, 1.0) >= abs(d):
            return 1.0
        lo, hi = 1e-300, 1.0  # the half-width falls as alpha grows: the alpha where it equals |d|
        if _width(parts, lo) < abs(d):
            return 0.0
        for _ in range(100):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if _width(parts, mid) > abs(d) else (lo, mid)
        return float(hi)
    if not _finite(diff.get("lo"), diff.get("hi")) or diff["hi"] <= diff["lo"]:
        return None
    se = (diff["hi"] - diff["lo"]) / (2 * sps.norm.ppf(0.975))
    return float(2 * sps.norm.sf(abs(d) / se))


def holm(pvals: dict) -> dict:
    """Holm's step-down adjustment (Holm 1979) of a family of p-values: with the m p-values sorted,
    p₍ᵢ₎ becomes max over j ≤ i of min(1, (m − j + 1)·p₍ⱼ₎). Rejecting where the adjusted p is
    below α controls the family-wise error at α. Returns key -> adjusted p."""
    keys = sorted(pvals, key=lambda k: pvals[k])
    m, out, run = len(keys), {}, 0.0
    for i, k in enumerate(keys):
        run = max(run, min(1.0, (m - i) * float(pvals[k])))
        out[k] = run
    return out


def at_floor(diff: dict, events: int = FLOOR_EVENTS) -> bool:
    """Whether a rate difference is at the floor: the record's ``events`` (``{"arm": e_a, "full":
    e_f}``, counts of the rate's events, e.g. toxic continuations) are below ``events`` in both
    arms. With so few events the delta-method interval of a rate collapses towards [0, 0] (no event:
    exactly 0) while the exact binomial 95% bound of each rate is still about 3/n or more
    (:func:`exact_upper`), so the interval cannot support any decision. A gap between groups is also
    at the floor when its record says ``floor: true`` (``stats.metrics.gap_floor``: in both arms a
    group expects fewer events than ``evaluation.min_group_events``)."""
    if diff.get("floor") is True:
        return True
    ev = diff.get("events")
    if not isinstance(ev, dict):
        return False
    a, f = ev.get("arm"), ev.get("full")
    return _finite(a, f) and a < events and f < events


def exact_upper(k: float, n: float, level: float = LEVEL) -> float:
    """One-sided exact (Clopper–Pearson) upper bound of a rate with ``k`` events out of ``n``."""
    return 1.0 if k >= n else float(sps.beta.ppf(level, k + 1, n - k))


def decide(diff: dict, margin: float, higher_is_better: bool | None = None, level: float = LEVEL,
           eq_level: float = EQ_LEVEL, p_adjusted: float | None = None) -> dict:
    """The decision for one arm − full difference record against margin δ > 0 (module docstring,
    steps 2 to 4; the fit gate is :func:`decide_all`'s).

    ``level``: confidence of "non-zero" (the ``level`` interval excludes 0); ``eq_level``: of
    "equivalent" (its interval inside ±δ); ``p_adjusted``: a multiplicity-adjusted p-value that,
    when given, decides "non-zero" instead (p_adjusted < 1 − level). Returns ``{decision, margin,
    beyond_margin}``; ``beyond_margin``: whether the ``level`` interval also lies beyond δ."""
    if not margin > 0:
        raise UserError(f"margin {margin!r}: an equivalence margin must be a positive number")
    out = {"decision": "undefined", "margin": float(margin), "beyond_margin": None}
    if at_floor(diff):
        out["decision"] = FLOOR
        return out
    ci, eq = interval_at(diff, level), interval_at(diff, eq_level)
    if ci is None or eq is None:
        return out
    (lo, hi), (lo_e, hi_e) = ci, eq
    equivalent = -margin < lo_e and hi_e < margin
    if p_adjusted is not None and _finite(p_adjusted):
        nonzero, up = p_adjusted < 1 - level, bool(diff["value"] > 0)
    else:
        nonzero, up = (lo > 0 or hi < 0), lo > 0
    if nonzero:
        word = "higher" if up else "lower"
        if higher_is_better is not None:
            word = "better" if up == bool(higher_is_better) else "worse"
        out.update(decision=word + (WITHIN if equivalent else ""),
                   beyond_margin=bool(lo > margin if up else hi < -margin))
    elif equivalent:
        out["decision"] = EQUIVALENT
    else:
        out["decision"] = INCONCLUSIVE
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


def primary_metrics(metrics, primary) -> list[str]:
    """The metrics of ``metrics`` that ``primary`` names: by name, or by a prefix that is not itself
    one of the metrics (``equalized_odds_difference`` covers ``equalized_odds_difference_race``;
    ``profit`` does not cover ``profit_gap`` when ``profit`` is a metric)."""
    names = list(metrics)
    return [m for m in names if any(m == p or (p not in names and m.startswith(p + "_"))
                                    for p in primary or [])]


def decide_all(minus_full: dict[str, dict[str, dict]], margins: dict[str, float],
               primary: list[str] | None = None, fit: dict[str, dict] | None = None,
               level: float = LEVEL, eq_level: float = EQ_LEVEL) -> dict[str, dict[str, dict]]:
    """Every arm − full difference decided against its margin (module docstring).

    minus_full: arm -> metric -> difference record (with ``higher_is_better`` where known);
    primary: the primary metrics (names or prefixes; the rest are secondary); fit: arm -> the fit
    gate's verdict (:func:`lorafair.stats.fit.fit_gate`: ``{fitted, reasons, ...}``; an arm absent
    from it is taken as fitted). The "non-zero" decisions of primary metrics over every judged arm
    (all but base and full) form one family whose p-values are Holm-adjusted, so the family-wise
    error of the headline "worse"/"better" is at most 1 − level; base − full is the fine-tuning effect
    itself and stays out of the family. Returns arm -> metric -> ``{arm, metric, decision, delta,
    margin, beyond_margin, value, lo, hi, lo90, hi90, n_seeds, n_units, events, fitted, primary, p_value,
    p_holm, more_data}`` (``more_data`` for an inconclusive one, ``p_holm`` for the family; a gap's
    ``GAP_FLOOR_KEYS`` where its record has them);
    a metric without a margin gets ``decision: "no margin"``."""
    fit = fit or {}
    family = {}
    for arm, recs in minus_full.items():
        if arm == "base" or not (fit.get(arm) or {}).get("fitted", True):
            continue
        for metric in primary_metrics(recs or {}, primary):
            r = recs[metric]
            if (isinstance(r, dict) and _finite(r.get("value")) and margin_for(metric, margins)
                    and not at_floor(r) and p_value(r) is not None):
                family[(arm, metric)] = p_value(r)
    adjusted = holm(family)
    out: dict[str, dict[str, dict]] = {}
    for arm, recs in minus_full.items():
        gate = fit.get(arm) or {"fitted": True}
        prim = set(primary_metrics(recs or {}, primary))
        for metric, r in (recs or {}).items():
            if not (isinstance(r, dict) and isinstance(r.get("value"), (int, float))):
                continue
            delta = margin_for(metric, margins)
            keep = {k: r.get(k) for k in ("value", "lo", "hi", "lo90", "hi90", "n_seeds", "n_units", "events")}
            keep.update({k: r[k] for k in GAP_FLOOR_KEYS if k in r})
            p_adj = adjusted.get((arm, metric))
            if delta is None:
                d = {"decision": "no margin", "margin": None, "beyond_margin": None}
            elif not gate.get("fitted", True):
                d = {"decision": f"{NO_FIT} ({'; '.join(gate.get('reasons') or ['see the training table'])})",
                     "margin": float(delta), "beyond_margin": None}
            else:
                d = decide(r, delta, r.get("higher_is_better"), level, eq_level, p_adj)
                if d["decision"] == INCONCLUSIVE:
                    d["more_data"] = more_data(r, delta)
            out.setdefault(arm, {})[metric] = {
                "arm": arm, "metric": metric, **d, "delta": d["margin"], **keep,
                "fitted": bool(gate.get("fitted", True)), "primary": metric in prim,
                "p_value": p_value(r), "p_holm": p_adj}
    return out


def is_equivalent(decision: str | None) -> bool:
    """Whether a decision puts the difference inside ±δ: equivalent, or non-zero but within δ."""
    return decision == EQUIVALENT or str(decision or "").endswith(WITHIN)


def base_word(decision: str | None) -> str:
    """A decision's word without its reason: ``"no verdict: did not fit (...)"`` -> ``"no verdict:
    did not fit"``."""
    d = str(decision or "")
    return NO_FIT if d.startswith(NO_FIT) else d


def rank_recommendation(decisions: dict[str, dict[str, dict]], ranks: dict[str, int],
                        metrics: list[str]) -> int | None:
    """Smallest rank whose arm is *equivalent* to full on every one of ``metrics`` (the primary
    metrics); None when no arm is ("none established"). "Worse, within δ" and "better, within δ" count
    as equivalent (their 90% interval lies inside ±δ: a difference, but one smaller than the margin);
    an arm that did not fit or sits at a floor is never recommended.

    decisions: arm -> metric -> :func:`decide` output; ranks: arm -> rank (arms of one variant)."""
    for arm in sorted(ranks, key=ranks.get):
        got = decisions.get(arm) or {}
        if metrics and all(is_equivalent((got.get(m) or {}).get("decision")) for m in metrics):
            return ranks[arm]
    return None
