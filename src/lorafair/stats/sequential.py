"""Group-sequential decisions: an arm against full fine-tuning, decided again each time training
seeds are added, with error rates that hold over all looks together.

Repeated confidence intervals (Jennison & Turnbull 1989; *Group Sequential Methods*, 2000, ch. 9)
with the O'Brien–Fleming-type spending function of Lan & DeMets (1983)::

    α(t) = 2 − 2 Φ(Φ⁻¹(1 − α/2) / √t),   0 < t ≤ 1,   α(1) = α,

applied to each side of a test at that side's error (α/2 per side for the two-sided test, the
convention of Lan & DeMets and of ``ldbounds``/``gsDesign``), where t = S_k / S_max is the
information fraction of look k (S_k training seeds of the arm, S_max
the cap ``evaluation.sequential.max_seeds``). The boundary c_k of look k is the z value at which the
probability, under the null and the canonical joint distribution of the looks' statistics
(corr(Z_i, Z_j) = √(t_i / t_j)), of crossing first at look k equals α(t_k) − α(t_{k−1}); it is
found by recursive numerical integration (Armitage, McPherson & Rowe 1969; Jennison & Turnbull
ch. 19): the sub-density of the Brownian motion B(t) = Z·√t on the continuation region is carried
from look to look on a Simpson grid, the crossing probability of the next increment taken exactly
from the normal distribution function.

Two boundary sets, one per decision:

- worse/better: two-sided, α = 0.05 (2·α₀.₀₂₅(t) of P(|Z_k| ≥ c_k first at k) spent); the look's
  interval is the crossed-design interval of :mod:`lorafair.stats.intervals` at the nominal level
  ``level_test = 2(1 − Φ(c_k))`` in place of 0.05 (t quantiles with each part's degrees of freedom);
- equivalence (two one-sided tests): one-sided, α = 0.05 per side; the interval at
  ``level_equiv = 2(1 − Φ(c_k))`` in place of 0.10 must lie inside (−δ, δ).

The decisions are worded as :func:`lorafair.stats.equivalence.decide` words them ("worse, within δ"
for a decided difference inside the margin, "uninformative (floor)" for a rate with too few events,
which a look does not settle). With a single look at t = 1 both levels are the fixed-sample ones
(0.05 and 0.10), so the decisions are those of ``decide`` without multiplicity adjustment: each
decision spends its own error over looks, and the Holm adjustment across arms and primary metrics of
the fixed-sample decisions is not combined with it (``MULTIPLICITY``, docs/measures.md).

Seeds measure information here; when the evaluation units carry part of the variance (a part that
does not shrink as seeds are added) the looks are more strongly correlated than assumed, which makes
the procedure conservative.

The planner (:func:`next_size`) picks an arm's next seed count: the smallest at which an open
decision would settle with that look's boundaries, were the difference and its variance components
to stay as measured. The loop that trains the seeds is ``lorafair.study.sequential``.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

from lorafair.stats import equivalence
from lorafair.stats.intervals import half_width

ALPHA_TEST = 0.05  # worse/better: two-sided
ALPHA_EQUIV = 0.05  # equivalence: each one-sided test
OPEN = "open"
MULTIPLICITY = ("each decision at its own per-look levels; not Holm-adjusted across arms and primary "
                "metrics (docs/measures.md)")
_GRID = 801  # Simpson points of the continuation region (odd)


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in xs)


def spending(t: float, alpha: float) -> float:
    """O'Brien–Fleming-type spending α(t) = 2 − 2Φ(z_{1−α/2}/√t): the error allowed by
    information fraction ``t`` (clipped to (0, 1])."""
    t = min(max(float(t), 1e-12), 1.0)
    return float(2 * _sf(special.ndtri(1 - alpha / 2) / np.sqrt(t)))


def _simpson(n: int) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w / 3.0


def _region(c: float, t: float, sides: int) -> tuple[float, float]:
    """Continuation region of B(t) = Z√t: (−c√t, c√t) two-sided, (−12√t, c√t) one-sided (a
    boundary beyond 12 standard deviations is taken at 12: the mass beyond is below 10⁻³²)."""
    b = min(c, 12.0) * np.sqrt(t)
    return (-b if sides == 2 else -12.0 * np.sqrt(t)), b


def _sf(z):
    return special.ndtr(-z)


def _cross(prev: tuple[np.ndarray, np.ndarray] | None, t_prev: float, t: float, c: float, sides: int
           ) -> float:
    """P(no crossing before, crossing at this look) for boundary c at time t."""
    lo, hi = _region(c, t, sides)
    if prev is None:
        sd = np.sqrt(t)
        return float(_sf(hi / sd) + (special.ndtr(lo / sd) if sides == 2 else 0.0))
    x, mass = prev
    sd = np.sqrt(t - t_prev)
    p = _sf((hi - x) / sd) + (special.ndtr((lo - x) / sd) if sides == 2 else 0.0)
    return float(mass @ p)


def _carry(prev, t_prev: float, t: float, c: float, sides: int) -> tuple[np.ndarray, np.ndarray]:
    """The sub-density of B(t) on the continuation region, as grid points and Simpson masses."""
    lo, hi = _region(c, t, sides)
    y = np.linspace(lo, hi, _GRID)
    w = _simpson(_GRID) * (y[1] - y[0])
    if prev is None:
        f = np.exp(-0.5 * y ** 2 / t) / np.sqrt(2 * np.pi * t)
    else:
        x, mass = prev
        d = t - t_prev
        f = (np.exp(-0.5 * (y[:, None] - x[None, :]) ** 2 / d) / np.sqrt(2 * np.pi * d)) @ mass
    return y, f * w


def _spent(t: float, alpha: float, sides: int) -> float:
    """Error spent by fraction t: per side α_side(t) with α_side = α/2 for a two-sided test."""
    return 2 * spending(t, alpha / 2) if sides == 2 else spending(t, alpha)


def _next_bound(prev, t_prev: float, spent: float, t: float, alpha: float, sides: int) -> float:
    """The boundary of a look at t after looks that spent ``spent`` (inf when it may spend nothing)."""
    target = _spent(t, alpha, sides) - spent
    if t <= t_prev or target <= 1e-15:
        return float("inf")
    f = lambda c: _cross(prev, t_prev, t, c, sides) - target  # noqa: E731
    return float(optimize.brentq(f, 0.0, 40.0, xtol=1e-10)) if f(40.0) < 0 < f(0.0) else float("inf")


@functools.lru_cache(maxsize=4096)
def _after(times: tuple[float, ...], alpha: float, sides: int):
    """(boundaries, error spent, last time, sub-density after the last look) of looks at ``times``."""
    if not times:
        return (), 0.0, 0.0, None
    bounds, spent, t_prev, prev = _after(times[:-1], alpha, sides)
    t = times[-1]
    c = _next_bound(prev, t_prev, spent, t, alpha, sides)
    if t <= t_prev:
        return bounds + (c,), spent, t_prev, prev
    spent += _cross(prev, t_prev, t, c, sides)
    return bounds + (c,), spent, t, _carry(prev, t_prev, t, c, sides)


def boundaries(times: tuple[float, ...], alpha: float, sides: int = 2) -> tuple[float, ...]:
    """Boundaries c_1..c_K (z scale) for looks at increasing information fractions ``times``
    (each in (0, 1]) spending ``alpha`` with :func:`spending` (per side; α/2 each for ``sides`` 2:
    P(|Z_k| ≥ c_k), α for 1: P(Z_k ≥ c_k)). A look that may spend nothing gets c = inf. The looks
    before the last are computed once and cached, so trying candidates for the next look is cheap."""
    times = tuple(min(max(float(t), 1e-9), 1.0) for t in times)
    if not times:
        return ()
    bounds, spent, t_prev, prev = _after(times[:-1], alpha, sides)
    return bounds + (_next_bound(prev, t_prev, spent, times[-1], alpha, sides),)


def crossing_probabilities(times, bounds, sides: int = 2) -> list[float]:
    """P(first crossing at look k) under the null for given boundaries (for checks)."""
    out, prev, t_prev = [], None, 0.0
    for t, c in zip(times, bounds):
        out.append(_cross(prev, t_prev, t, c, sides))
        prev, t_prev = _carry(prev, t_prev, t, c, sides), t
    return out


def look_levels(seeds: list[int] | tuple[int, ...], max_seeds: int, alpha_test: float = ALPHA_TEST,
                alpha_equiv: float = ALPHA_EQUIV) -> list[dict]:
    """Per look of one arm (its seed counts so far, increasing): the information fraction, both
    boundaries, the error spent so far and the nominal levels its intervals use (module docstring)."""
    times = tuple(min(1.0, s / max_seeds) for s in seeds)
    ct, ce = boundaries(times, alpha_test, 2), boundaries(times, alpha_equiv, 1)
    return [{"look": k + 1, "n_seeds": int(s), "t": round(t, 6), "z_test": ct[k], "z_equiv": ce[k],
             "spent_test": _spent(t, alpha_test, 2), "spent_equiv": _spent(t, alpha_equiv, 1),
             "level_test": float(2 * _sf(ct[k])), "level_equiv": float(2 * _sf(ce[k]))}
            for k, (s, t) in enumerate(zip(seeds, times))]


def adjusted_half_width(diff: dict, level: float) -> float:
    """Half-width of the difference record's interval at nominal two-sided ``level``: the
    crossed-design interval (its variance ``parts``, t quantiles) when the record has them; for a
    crossed-bootstrap record, the normal approximation se = (hi − lo) / (2·1.96)."""
    if level <= 0:
        return float("inf")
    parts = diff.get("parts")
    if isinstance(parts, dict) and _finite(parts.get("v_seed"), parts.get("v_unit")):
        return float(half_width(parts, level))
    lo, hi = diff.get("lo"), diff.get("hi")
    if not _finite(lo, hi):
        return float("nan")
    return float((hi - lo) / (2 * sps.norm.isf(0.025)) * sps.norm.isf(level / 2))


def is_decided(decision: str) -> bool:
    """Whether a look's decision settles the difference (a floor, ``open`` or ``undefined`` does not:
    more seeds may add events or a finite interval)."""
    return decision not in (OPEN, "undefined", equivalence.FLOOR)


def decide_look(diff: dict, margin: float, look: dict, higher_is_better: bool | None = None) -> dict:
    """The decision of one look, in the words of :func:`lorafair.stats.equivalence.decide`:
    ``worse``/``better`` (``higher``/``lower`` without a direction) when d ± (half-width at
    ``level_test``) excludes 0, ``worse, within δ`` etc. when d ± (half-width at ``level_equiv``) also
    lies inside (−δ, δ); ``equivalent`` when only the latter holds; else ``open``. A rate at the floor
    (:func:`lorafair.stats.equivalence.at_floor`) is ``uninformative (floor)``; ``undefined`` without a
    finite interval. Returns ``{decision, lo, hi, lo_equiv, hi_equiv}`` (the look's adjusted intervals)."""
    d = diff.get("value")
    out = {"decision": "undefined", "lo": None, "hi": None, "lo_equiv": None, "hi_equiv": None}
    if equivalence.at_floor(diff):
        return {**out, "decision": equivalence.FLOOR}
    hw_t, hw_e = adjusted_half_width(diff, look["level_test"]), adjusted_half_width(diff, look["level_equiv"])
    if not _finite(d) or np.isnan(hw_t) or np.isnan(hw_e):
        return out
    out.update(lo=d - hw_t, hi=d + hw_t, lo_equiv=d - hw_e, hi_equiv=d + hw_e)
    equivalent = -margin < d - hw_e and d + hw_e < margin
    if d - hw_t > 0 or d + hw_t < 0:
        up = d - hw_t > 0
        word = "higher" if up else "lower"
        if higher_is_better is not None:
            word = "better" if up == bool(higher_is_better) else "worse"
        out["decision"] = word + (equivalence.WITHIN if equivalent else "")
    elif equivalent:
        out["decision"] = equivalence.EQUIVALENT
    else:
        out["decision"] = OPEN
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in out.items()}


def settles(diff: dict, margin: float, n_seeds: int, look: dict) -> bool:
    """Whether the difference would be decided at a look with ``n_seeds`` seeds, were its value and
    variance components (``components``: seed, unit, inter; ``n_units``) what they are now: the goal
    is equivalence when |d| < δ, a non-zero difference otherwise (as in ``equivalence.more_data``)."""
    comp, U, d = diff.get("components") or {}, diff.get("n_units"), diff.get("value")
    seed, unit, inter = (comp.get(k) for k in ("seed", "unit", "inter"))
    if not (_finite(d, seed, unit, inter) and U and n_seeds >= 2):
        return False
    parts = {"v_seed": (seed + inter / U) / n_seeds, "df_seed": n_seeds - 1, "v_unit": unit / U, "df_unit": U - 1}
    if abs(d) < margin:
        return abs(d) + float(half_width(parts, look["level_equiv"])) < margin
    return float(half_width(parts, look["level_test"])) < abs(d)


def seeds_to_settle(diff: dict, margin: float, past: list[int], max_seeds: int) -> int | None:
    """The smallest seed count S' (past seed counts ``past``, S' in (past[-1], max_seeds]) at which
    :func:`settles` holds with the boundaries of a look at S'; None when no count up to the cap does."""
    for s in range(past[-1] + 1, max_seeds + 1):
        if settles(diff, margin, s, look_levels([*past, s], max_seeds)[-1]):
            return s
    return None


def next_size(diffs: list[tuple[dict, float]], past: list[int], max_seeds: int, step: int) -> tuple[int, int | None]:
    """The planner: the seed count of an arm's next look from its open differences (record, margin).

    The smallest count at which one of them is projected to settle (:func:`seeds_to_settle`), at
    least ``past[-1] + step``, at most ``max_seeds``. Returns (count, projected count or None when
    none is projected to settle by the cap)."""
    need = [s for s in (seeds_to_settle(d, m, past, max_seeds) for d, m in diffs) if s is not None]
    want = min(need) if need else None
    return min(max_seeds, max(past[-1] + step, want or 0)), want
