"""Statistics shared by every task's measures: the metric record, bootstrap intervals, small-group
handling and the agreement of two scorers.

Pure functions of arrays and data frames; nothing here imports training, tasks or the CLI. The
task-specific measures live with their tasks (``lorafair.tasks.toxicity.measures``,
``lorafair.tasks.classification.measures``).

Every metric is reported as a *record*::

    {"value": float, "lo": float, "hi": float, "higher_is_better": bool | None, "unit": str, ...}

where ``[lo, hi]`` is a percentile bootstrap interval (95% by default, ``alpha=0.05``) for one
evaluation (one training seed). The resampling unit is always stated in the function's docstring:
prompts for generations, rows (examples) for decisions. Results pooled over training seeds use the
crossed-design intervals of :mod:`lorafair.stats.intervals`. Bootstrap replicates in which a statistic is
undefined (a group missing from the resample, a rate with a zero denominator) are skipped for that
statistic; ``n_boot`` in a record is the number of replicates actually used.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from lorafair.errors import UserError
from lorafair.stats.intervals import percentile_counted

Stat = Callable[[np.ndarray], float]

_AXIS_STATS = (np.mean, np.median, np.sum, np.nanmean, np.max, np.min)
_CHUNK_CELLS = 4_000_000  # bootstrap index cells materialised at once (memory bound)


# ----------------------------------------------------------------------------- generic bootstrap


def record(value: float, lo: float, hi: float, *, higher_is_better: bool | None, unit: str,
           **extra: Any) -> dict:
    """One metric record (see the module docstring)."""
    return {"value": float(value), "lo": float(lo), "hi": float(hi),
            "higher_is_better": higher_is_better, "unit": unit, **extra}


# the percentile interval with its count of finite replicates: one home, lorafair.stats.intervals
percentile = percentile_counted


def index_chunks(rng: np.random.Generator, n: int, n_boot: int) -> Iterator[np.ndarray]:
    """Resampled row indices, ``[chunk, n]`` at a time, ``n_boot`` rows in all."""
    per = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < n_boot:
        b = min(per, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def _apply(stat: Stat, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``stat`` of ``x[i]`` for every row ``i`` of ``idx: [b, n]`` → ``[b]``."""
    if x.ndim == 1 and any(stat is s for s in _AXIS_STATS):
        return np.asarray(stat(x[idx], axis=1), dtype=np.float64)
    return np.array([stat(x[i]) for i in idx], dtype=np.float64)


def check_boot(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise UserError(f"n_boot={n_boot}: need at least 1 bootstrap replicate")
    if not 0 < alpha < 1:
        raise UserError(f"alpha={alpha}: must lie strictly between 0 and 1 (0.05 gives 95%)")


def bootstrap_ci(values: np.ndarray, stat: Stat = np.mean, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict:
    """Percentile bootstrap interval of ``stat(values)``, resampling rows.

    values: [n, ...]; rows are the independent units (prompts). ``stat`` maps an array of rows to a
    number. Returns ``{value, lo, hi, n, n_boot}``; with no rows every number is NaN.
    """
    check_boot(n_boot, alpha)
    x = np.asarray(values)
    n = int(x.shape[0]) if x.ndim else 0
    if n == 0:
        nan = float("nan")
        return {"value": nan, "lo": nan, "hi": nan, "n": 0, "n_boot": 0}
    rng = np.random.default_rng(seed)
    boots = np.concatenate([_apply(stat, x, idx) for idx in index_chunks(rng, n, n_boot)])
    lo, hi, used = percentile(boots, alpha)
    return {"value": float(stat(x)), "lo": lo, "hi": hi, "n": n, "n_boot": used}


def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, stat: Stat = np.mean, n_boot: int = 1000,
                          seed: int = 0, alpha: float = 0.05) -> dict:
    """Interval of ``stat(a) - stat(b)`` resampling the SAME rows of both (paired: same prompts).

    a, b: [n, ...] with row i of ``a`` and row i of ``b`` measured on the same unit.
    Returns ``{value, lo, hi, n, n_boot}``. Identical inputs give exactly 0 with interval [0, 0].
    """
    check_boot(n_boot, alpha)
    xa, xb = np.asarray(a), np.asarray(b)
    if xa.shape[:1] != xb.shape[:1]:
        raise UserError(f"paired difference needs the same rows in both: got {xa.shape[:1]} and "
                        f"{xb.shape[:1]} rows; align both on the same prompts first")
    n = int(xa.shape[0]) if xa.ndim else 0
    if n == 0:
        nan = float("nan")
        return {"value": nan, "lo": nan, "hi": nan, "n": 0, "n_boot": 0}
    rng = np.random.default_rng(seed)
    boots = np.concatenate([_apply(stat, xa, idx) - _apply(stat, xb, idx)
                            for idx in index_chunks(rng, n, n_boot)])
    lo, hi, used = percentile(boots, alpha)
    return {"value": float(stat(xa)) - float(stat(xb)), "lo": lo, "hi": hi, "n": n, "n_boot": used}


def require_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UserError(f"{what}: missing column(s) {missing}; the frame has {list(df.columns)}")


# ----------------------------------------------------------------------------- groups


def small_groups(sensitive: pd.Series, min_size: int, merge: bool = False, units: pd.Series | None = None
                 ) -> tuple[pd.Series, dict[str, int]]:
    """Groups with fewer than ``min_size`` units: (labels, left out {group: size}).

    A group's size is its number of entries, or with ``units`` (aligned with ``sensitive``, e.g. the
    template each prompt was written from) its number of distinct units. With ``merge`` the small
    groups are first relabelled "other" (one group); whatever is still below ``min_size`` is returned
    as left out. The labels are returned unchanged otherwise."""
    def sizes(labels: pd.Series) -> pd.Series:
        if units is None:
            return labels.value_counts()
        return pd.Series(units.to_numpy()).groupby(labels.to_numpy()).nunique()

    counts = sizes(sensitive)
    small = [g for g, n in counts.items() if n < min_size]
    if merge and len(small) > 0:
        sensitive = sensitive.where(~sensitive.isin(small), "other")
        counts = sizes(sensitive)
    return sensitive, {str(g): int(n) for g, n in sorted(counts.items(), key=lambda kv: str(kv[0]))
                       if n < min_size}


def expected_events(events: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Per group, the events its size would hold at the rate pooled over all the groups given:
    ``totals_g × p`` with p = Σ events / Σ totals, on the rarer side (``1 − p`` when p > ½, so a rate
    near 1 counts its non-events). events, totals: ``[G]`` (e.g. toxic continuations and
    continuations of each group)."""
    events, totals = np.asarray(events, np.float64), np.asarray(totals, np.float64)
    whole = totals.sum()
    p = events.sum() / whole if whole > 0 else 0.0
    return totals * min(p, 1.0 - p)


def gap_floor(arm: dict[str, float], full: dict[str, float], least: float) -> dict:
    """The floor fields of an arm − full gap difference: each arm's expected events per group
    (:func:`expected_events`) and ``floor``, true when both arms have a group with fewer than
    ``least``: neither gap can then show a difference between groups
    (``stats.equivalence.at_floor`` reads it)."""
    def low(e: dict[str, float]) -> bool:
        return min(e.values(), default=0.0) < least

    return {"floor": low(arm) and low(full), "expected_events": {"arm": arm, "full": full},
            "min_group_events": float(least)}


# ----------------------------------------------------------------------------- two scorers


def scorer_agreement(a: np.ndarray, b: np.ndarray, threshold: float = 0.5) -> dict:
    """How two toxicity scorers agree on the same continuations, a and b: [n] scores.

    - spearman: Spearman rank correlation of the scores (scipy.stats.spearmanr), with its p-value;
      None when either scorer gives every text the same score;
    - agreement: share of continuations on the same side of ``threshold`` (both ≥ or both <);
    - kappa: Cohen's kappa of those two labellings (sklearn), agreement corrected for chance;
      None when both label every text alike;
    - toxic_a, toxic_b, toxic_both: shares flagged by a, by b, and by both.
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise UserError(f"scorer agreement: score arrays must be 1-d and the same length, got {a.shape} and {b.shape}")
    n = int(a.size)
    out = {"n": n, "threshold": float(threshold), "spearman": None, "spearman_p": None, "agreement": None,
           "kappa": None, "toxic_a": None, "toxic_b": None, "toxic_both": None}
    if n == 0:
        return out
    ta, tb = a >= threshold, b >= threshold
    out.update(agreement=float(np.mean(ta == tb)), toxic_a=float(ta.mean()), toxic_b=float(tb.mean()),
               toxic_both=float((ta & tb).mean()))
    if np.ptp(a) > 0 and np.ptp(b) > 0:
        rho, p = spearmanr(a, b)
        out.update(spearman=float(rho), spearman_p=float(p))
    if len(set(ta.tolist()) | set(tb.tolist())) > 1:
        out["kappa"] = float(cohen_kappa_score(ta, tb))
    return out
