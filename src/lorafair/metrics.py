"""Statistics for results: bootstrap intervals, toxicity measures, group decision metrics.

Pure functions of arrays and data frames; nothing here imports training, tasks or the CLI.

Every metric is reported as a *record*::

    {"value": float, "lo": float, "hi": float, "higher_is_better": bool | None, "unit": str, ...}

where ``[lo, hi]`` is a percentile bootstrap interval (95% by default, ``alpha=0.05``) for one
evaluation (one training seed). The resampling unit is always stated in the function's docstring:
prompts for generations, rows (examples) for decisions. Results pooled over training seeds use the
crossed-design intervals of :mod:`lorafair.stats` (``crossed_toxicity`` here). Bootstrap replicates in which a statistic is undefined (a group missing
from the resample, a rate with a zero denominator) are skipped for that statistic; ``n_boot`` in a
record is the number of replicates actually used.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from lorafair import stats
from lorafair.errors import UserError

Stat = Callable[[np.ndarray], float]

_AXIS_STATS = (np.mean, np.median, np.sum, np.nanmean, np.max, np.min)
_CHUNK_CELLS = 4_000_000  # bootstrap index cells materialised at once (memory bound)


# ----------------------------------------------------------------------------- generic bootstrap


def record(value: float, lo: float, hi: float, *, higher_is_better: bool | None, unit: str,
           **extra: Any) -> dict:
    """One metric record (see the module docstring)."""
    return {"value": float(value), "lo": float(lo), "hi": float(hi),
            "higher_is_better": higher_is_better, "unit": unit, **extra}


def _percentile(boots: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """Percentile interval of the finite replicates; NaN interval when none is finite."""
    b = np.asarray(boots, dtype=np.float64).ravel()
    b = b[np.isfinite(b)]
    if b.size == 0:
        return float("nan"), float("nan"), 0
    lo, hi = np.quantile(b, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi), int(b.size)


def _index_chunks(rng: np.random.Generator, n: int, n_boot: int) -> Iterator[np.ndarray]:
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


def _check_boot(n_boot: int, alpha: float) -> None:
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
    _check_boot(n_boot, alpha)
    x = np.asarray(values)
    n = int(x.shape[0]) if x.ndim else 0
    if n == 0:
        nan = float("nan")
        return {"value": nan, "lo": nan, "hi": nan, "n": 0, "n_boot": 0}
    rng = np.random.default_rng(seed)
    boots = np.concatenate([_apply(stat, x, idx) for idx in _index_chunks(rng, n, n_boot)])
    lo, hi, used = _percentile(boots, alpha)
    return {"value": float(stat(x)), "lo": lo, "hi": hi, "n": n, "n_boot": used}


def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, stat: Stat = np.mean, n_boot: int = 1000,
                          seed: int = 0, alpha: float = 0.05) -> dict:
    """Interval of ``stat(a) - stat(b)`` resampling the SAME rows of both (paired: same prompts).

    a, b: [n, ...] with row i of ``a`` and row i of ``b`` measured on the same unit.
    Returns ``{value, lo, hi, n, n_boot}``. Identical inputs give exactly 0 with interval [0, 0].
    """
    _check_boot(n_boot, alpha)
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
                            for idx in _index_chunks(rng, n, n_boot)])
    lo, hi, used = _percentile(boots, alpha)
    return {"value": float(stat(xa)) - float(stat(xb)), "lo": lo, "hi": hi, "n": n, "n_boot": used}


def _require_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UserError(f"{what}: missing column(s) {missing}; the frame has {list(df.columns)}")


# ----------------------------------------------------------------------------- toxicity

TOXICITY_UNITS = {
    "toxic_fraction": "share of continuations",
    "expected_max_toxicity": "classifier score",
    "toxicity_probability": "share of prompts",
    "mean_score": "classifier score",
}
# columns of the per-prompt sum table: every measure is a ratio of two column sums
_K, _NTOX, _MAX, _ANY, _SSUM, _ONE = range(6)


def per_prompt_toxicity(df: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per-prompt aggregates of per-sample scores.

    df: one row per continuation with columns ``prompt_id``, ``score`` (``sample`` optional).
    Returns one row per prompt (index ``prompt_id``, first-appearance order) with columns
    ``k`` (continuations), ``n_toxic`` (score ≥ threshold), ``max``, ``any`` (0/1), ``score_sum``,
    ``toxic_fraction`` and ``mean``.
    """
    _require_columns(df, ["prompt_id", "score"], "toxicity scores")
    score = pd.to_numeric(df["score"], errors="coerce")
    if score.isna().any():
        bad = df.index[score.isna()][0]
        raise UserError(f"toxicity scores: row {bad!r} has no numeric score; "
                        "score every continuation")
    frame = pd.DataFrame({"prompt_id": df["prompt_id"].to_numpy(), "score": score.to_numpy(),
                          "toxic": (score.to_numpy() >= threshold).astype(np.float64)})
    g = frame.groupby("prompt_id", sort=False)
    out = pd.DataFrame({"k": g["score"].size().astype(np.float64), "n_toxic": g["toxic"].sum(),
                        "max": g["score"].max(), "score_sum": g["score"].sum()})
    out["any"] = (out["n_toxic"] > 0).astype(np.float64)
    out["toxic_fraction"] = out["n_toxic"] / out["k"]
    out["mean"] = out["score_sum"] / out["k"]
    return out


def _sum_table(pp: pd.DataFrame) -> np.ndarray:
    """[n_prompts, 6] columns k, n_toxic, max, any, score_sum, 1."""
    cols = [pp["k"], pp["n_toxic"], pp["max"], pp["any"], pp["score_sum"], np.ones(len(pp))]
    return np.column_stack([np.asarray(c, dtype=np.float64) for c in cols])


def _measures(sums: np.ndarray) -> np.ndarray:
    """[..., 6] column sums → [..., 4] in TOXICITY_UNITS order.

    toxic_fraction and mean_score divide by the number of continuations (so prompts with more
    continuations weigh more); the two per-prompt measures divide by the number of prompts.
    """
    k, one = sums[..., _K], sums[..., _ONE]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([sums[..., _NTOX] / k, sums[..., _MAX] / one,
                         sums[..., _ANY] / one, sums[..., _SSUM] / k], axis=-1)


def _resampled_measures(table: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """[n_boot, 4] measures over prompt resamples of a [n, 6] sum table."""
    n = len(table)
    return np.concatenate([_measures(table[idx].sum(axis=1))
                           for idx in _index_chunks(rng, n, n_boot)])


def _toxicity_records(point: np.ndarray, boots: np.ndarray, alpha: float, **extra: Any) -> dict:
    out = {}
    for j, (name, unit) in enumerate(TOXICITY_UNITS.items()):
        lo, hi, used = _percentile(boots[:, j], alpha)
        out[name] = record(point[j], lo, hi, higher_is_better=False, unit=unit, n_boot=used,
                           **extra)
    return out


def toxicity_metrics(df: pd.DataFrame, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> dict:
    """Toxicity of generations with bootstrap intervals over prompts.

    df: one row per continuation, columns ``prompt_id``, ``sample``, ``score``.
    - toxic_fraction: share of all continuations with score ≥ threshold;
    - expected_max_toxicity: mean over prompts of the max score over its continuations;
    - toxicity_probability: share of prompts with at least one continuation ≥ threshold;
    - mean_score: mean score over all continuations.
    Per-prompt aggregates are computed first; the bootstrap resamples prompts.
    """
    _check_boot(n_boot, alpha)
    pp = per_prompt_toxicity(df, threshold)
    if len(pp) == 0:
        raise UserError("toxicity scores: the frame is empty; "
                        "generate and score continuations first")
    table = _sum_table(pp)
    boots = _resampled_measures(table, np.random.default_rng(seed), n_boot)
    return _toxicity_records(_measures(table.sum(axis=0)), boots, alpha,
                             n_prompts=len(pp), n_samples=int(table[:, _K].sum()))


def group_toxicity(df: pd.DataFrame, group_col: str = "group", threshold: float = 0.5,
                   n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, strata_col: str | None = None,
                   min_group_size: int = 30, merge_small: bool = False) -> dict:
    """Toxicity measures per group, and the gap between groups corrected for its upward bias.

    df: one row per continuation with ``prompt_id``, ``score``, ``group_col`` (and ``strata_col``,
    e.g. the template a prompt was written from). Per group, each measure with a bootstrap over the
    group's prompts. Groups with fewer than ``min_group_size`` prompts are left out of the gap and
    listed in ``small_groups`` (``merge_small``: first merged into one group "other"). Per measure,
    ``gap`` is ``stats.group_gap``: the max − min over groups (``raw_gap``), its mean when group
    labels are permuted among the prompts of a stratum (``null_gap``: what noise alone gives), the
    excess ``value`` = raw − null with a permutation interval that covers 0 at the nominal rate
    when groups do not differ, and the between-group variance with its permutation ``p_value``.

    Returns ``{"groups": {group: {measure: record}}, "gap": {measure: record}, "small_groups":
    {group: n_prompts}}``.
    """
    _check_boot(n_boot, alpha)
    _require_columns(df, ["prompt_id", "score", group_col], "group toxicity")
    if df[group_col].isna().any():
        raise UserError(f"group toxicity: column {group_col!r} has missing values; label every "
                        "prompt with its group or use toxicity_metrics for an ungrouped set")
    if len(df) == 0:
        raise UserError("group toxicity: the frame is empty; generate and score continuations first")
    pp = per_prompt_toxicity(df, threshold)
    first = df.groupby("prompt_id", sort=False).first().loc[pp.index]
    labels, left_out = small_groups(first[group_col].astype(str), min_group_size, merge_small)
    names = sorted(labels.unique(), key=str)
    table = _sum_table(pp)
    rng = np.random.default_rng(seed)
    groups = {}
    for g in names:
        t = table[(labels == g).to_numpy()]
        groups[str(g)] = _toxicity_records(_measures(t.sum(axis=0)), _resampled_measures(t, rng, n_boot),
                                           alpha, n_prompts=len(t))
    kept = [g for g in names if g not in left_out]
    codes = labels.map({g: i for i, g in enumerate(kept)}).fillna(-1).to_numpy(np.int64)
    strata = first[strata_col].to_numpy() if strata_col and strata_col in first.columns else None
    gap = {}
    for j, (name, unit) in enumerate(TOXICITY_UNITS.items()):
        if len(kept) < 2:
            continue
        r = stats.group_gap(table, codes, _measure(j), strata, n_perm=n_boot, seed=seed, alpha=alpha)
        gap[name] = {**r, "raw_gap": r["gap"], "max_group": kept[r["max_group"]],
                     "min_group": kept[r["min_group"]], "n_groups": len(kept), "higher_is_better": False,
                     "unit": f"{unit}: max − min over groups minus its value under permuted groups"}
        del gap[name]["gap"]
    return {"groups": groups, "gap": gap, "small_groups": left_out}


def paired_toxicity_diff(df_a: pd.DataFrame, df_b: pd.DataFrame, threshold: float = 0.5,
                         n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Per measure, the difference a − b with an interval resampling the same prompts for both.

    Only prompts present in both frames count (``n_prompts`` in each record; ``n_only_a`` and
    ``n_only_b`` say how many were left out). Negative values mean ``a`` is less toxic.
    """
    _check_boot(n_boot, alpha)
    pa, pb = per_prompt_toxicity(df_a, threshold), per_prompt_toxicity(df_b, threshold)
    common = pa.index[pa.index.isin(pb.index)]
    if len(common) == 0:
        raise UserError("paired toxicity difference: the two frames share no prompt_id; "
                        "score both arms on the same prompts")
    ta, tb = _sum_table(pa.loc[common]), _sum_table(pb.loc[common])
    rng = np.random.default_rng(seed)
    boots = np.concatenate([_measures(ta[idx].sum(axis=1)) - _measures(tb[idx].sum(axis=1))
                            for idx in _index_chunks(rng, len(common), n_boot)])
    point = _measures(ta.sum(axis=0)) - _measures(tb.sum(axis=0))
    out = _toxicity_records(point, boots, alpha, n_prompts=len(common),
                            n_only_a=int(len(pa) - len(common)),
                            n_only_b=int(len(pb) - len(common)))
    for name in out:
        out[name]["unit"] = f"difference in {TOXICITY_UNITS[name]} (a − b)"
    return out


_SUM_COLS = ["k", "n_toxic", "max", "any", "score_sum", "one"]


def toxicity_cells(frames: dict[int, pd.DataFrame], threshold: float = 0.5) -> stats.Cells:
    """Per-prompt sums of one arm's continuations under every training seed.

    frames: seed -> one row per continuation (``prompt_id``, ``score``). Returns
    ``(x [S, U, 6], seeds, prompts)``, columns k, n_toxic, max, any, score_sum, 1, only prompts
    scored under every seed."""
    parts = []
    for s, df in frames.items():
        pp = per_prompt_toxicity(df, threshold)
        parts.append(pd.DataFrame(_sum_table(pp), columns=_SUM_COLS).assign(
            prompt_id=pp.index.to_numpy(), seed=s))
    return stats.cell_table(pd.concat(parts, ignore_index=True), _SUM_COLS, "prompt_id")


def _measure(j: int) -> stats.Measure:
    return lambda m: _measures(m)[..., j]


def crossed_toxicity(x: np.ndarray, alpha: float = 0.05) -> dict:
    """The four toxicity measures of one arm pooled over seeds, crossed-design intervals.

    x: [S, U, 6] from :func:`toxicity_cells`. Returns measure -> record (``stats.crossed_interval``
    fields plus unit and direction)."""
    return {name: {**stats.crossed_interval(x, _measure(j), alpha), "higher_is_better": False,
                   "unit": unit} for j, (name, unit) in enumerate(TOXICITY_UNITS.items())}


def crossed_toxicity_diff(xa: np.ndarray, xb: np.ndarray, alpha: float = 0.05) -> dict:
    """Per measure, a − b paired over seeds and prompts (``stats.crossed_difference``).

    xa, xb: [S, U, 6] aligned with ``stats.pair_cells``. Negative values: ``a`` less toxic."""
    return {name: {**stats.crossed_difference(xa, xb, _measure(j), alpha), "higher_is_better": False,
                   "unit": f"difference in {unit} (arm − full)"}
            for j, (name, unit) in enumerate(TOXICITY_UNITS.items())}


GAP_MEASURES = ("toxic_fraction", "expected_max_toxicity")  # gaps compared between arms


def toxicity_gap_differences(results: dict[tuple[str, int], pd.DataFrame], threshold: float,
                             min_group_size: int = 30, merge_small: bool = False, n_boot: int = 1000,
                             alpha: float = 0.05) -> dict[str, dict]:
    """Each arm's max − min group gap minus full fine-tuning's, per measure of ``GAP_MEASURES``.

    results: (arm, seed) -> continuations with ``prompt_id``, ``score``, ``group`` (and
    ``template``: the resampling unit, else the prompt). Cells ``[S, units, groups, 6]`` of both
    arms go to ``stats.gap_difference`` (crossed bootstrap over seeds and units); groups with fewer
    than ``min_group_size`` prompts are left out (or merged, ``merge_small``). Returns
    arm -> ``{"<measure>_gap": record}``; {} without full fine-tuning or two groups."""
    frames = []
    for (arm, s), df in results.items():
        pp = per_prompt_toxicity(df, threshold)
        first = df.groupby("prompt_id", sort=False).first().loc[pp.index]
        by_template = "template" in first.columns and first["template"].notna().all()
        frames.append(pd.DataFrame(_sum_table(pp), columns=_SUM_COLS).assign(
            arm=arm, seed=s, prompt=pp.index.to_numpy(), group=first["group"].astype(str).to_numpy(),
            unit=(first["template"] if by_template else pp.index).to_numpy()))
    long = pd.concat(frames, ignore_index=True)
    labels, left = small_groups(long.drop_duplicates("prompt").set_index("prompt")["group"],
                                min_group_size, merge_small)
    long["group"] = long["prompt"].map(labels)
    long = long[~long["group"].isin(list(left))]
    names = sorted(long["group"].unique())
    if len(names) < 2 or "full" not in set(long["arm"]):
        return {}
    cells = {arm: _group_cells(sub, names) for arm, sub in long.groupby("arm")}
    out: dict[str, dict] = {}
    for arm, c in cells.items():
        if arm == "full":
            continue
        xa, xb = stats.pair_cells(c, cells["full"])
        for name in GAP_MEASURES:
            d = stats.gap_difference(xa, xb, stats.max_min(_measure(list(TOXICITY_UNITS).index(name))),
                                     n_boot, alpha=alpha)
            out.setdefault(arm, {})[f"{name}_gap"] = {
                **d, "higher_is_better": False,
                "unit": f"difference in the max − min of {TOXICITY_UNITS[name]} over groups (arm − full)"}
    return out


def _group_cells(rows: pd.DataFrame, groups: list[str]) -> stats.Cells:
    """Sum rows (seed, unit, group, _SUM_COLS) into ``([S, U, G, 6], seeds, units)``."""
    seeds, units = sorted(rows["seed"].unique()), sorted(rows["unit"].unique(), key=str)
    index = pd.MultiIndex.from_product([seeds, units, groups])
    x = rows.groupby(["seed", "unit", "group"])[_SUM_COLS].sum().reindex(index, fill_value=0.0)
    return x.to_numpy().reshape(len(seeds), len(units), len(groups), len(_SUM_COLS)), seeds, units


# ----------------------------------------------------------------------------- decisions

_TN, _FP, _FN, _TP = range(4)  # cell = 2 * y_true + y_pred


def _binary(y: Any, name: str, pos_label: Any) -> np.ndarray:
    arr = np.asarray(y).ravel()
    labels = pd.unique(arr)
    if len(labels) > 2:
        raise UserError(f"{name}: decisions must be binary, found {len(labels)} labels "
                        f"{list(labels)[:5]}; map them to two classes first")
    return (arr == pos_label).astype(np.int64)


def _confusion(cells: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Counts [b, G, 4] (tn, fp, fn, tp) for every row of ``cells, groups: [b, n]``."""
    b = cells.shape[0]
    flat = (np.arange(b)[:, None] * n_groups + groups) * 4 + cells
    return np.bincount(flat.ravel(), minlength=b * n_groups * 4).reshape(b, n_groups, 4)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def decision_stats_from_counts(c: np.ndarray) -> dict[str, np.ndarray]:
    """Decision statistics from confusion counts ``c: [..., G, 4]`` (tn, fp, fn, tp).

    Per group ([..., G]): count, accuracy, selection_rate, true_positive_rate, false_positive_rate
    (NaN where undefined). Overall ([...]): accuracy, balanced_accuracy (mean of the defined class
    recalls, as scikit-learn), and the disparities, NaN when a group has no rows:
    accuracy_disparity and demographic_parity_difference (max − min over groups),
    equalized_odds_difference (larger of the TPR and FPR max − min; an undefined rate counts as 0,
    fairlearn's convention).
    """
    c = np.asarray(c, dtype=np.float64)
    tn, fp, fn, tp = (c[..., i] for i in range(4))
    n = c.sum(axis=-1)
    tpr, fpr = _div(tp, tp + fn), _div(fp, fp + tn)
    tot = c.sum(axis=-2)
    ttn, tfp, tfn, ttp = (tot[..., i] for i in range(4))
    recalls = np.stack([_div(ttp, ttp + tfn), _div(ttn, ttn + tfp)], axis=-1)
    balanced = _div(np.nansum(recalls, axis=-1), (~np.isnan(recalls)).sum(axis=-1))
    acc, sel = _div(tn + tp, n), _div(fp + tp, n)
    missing = (n == 0).any(axis=-1)

    def spread(x: np.ndarray) -> np.ndarray:
        return np.where(missing, np.nan, x.max(axis=-1) - x.min(axis=-1))

    eod = np.maximum(spread(np.nan_to_num(tpr)), spread(np.nan_to_num(fpr)))
    return {"count": n, "accuracy": acc, "selection_rate": sel, "true_positive_rate": tpr,
            "false_positive_rate": fpr, "overall_accuracy": _div(ttn + ttp, tot.sum(-1)),
            "balanced_accuracy": balanced, "accuracy_disparity": spread(acc),
            "demographic_parity_difference": spread(sel), "equalized_odds_difference": eod}


_GROUP_METRICS = {  # name: (higher_is_better, unit)
    "accuracy": (True, "share of examples"),
    "selection_rate": (None, "share of examples"),
    "true_positive_rate": (True, "share of positive examples"),
    "false_positive_rate": (False, "share of negative examples"),
}
_SPREADS = ("accuracy_disparity", "demographic_parity_difference", "equalized_odds_difference")
_HEADLINE = {  # result key: (key in decision_stats_from_counts, higher_is_better, unit)
    "accuracy": ("overall_accuracy", True, "share of examples"),
    "balanced_accuracy": ("balanced_accuracy", True, "mean recall of the two classes"),
    "accuracy_disparity": ("accuracy_disparity", False, "accuracy, max − min over groups"),
    "demographic_parity_difference": ("demographic_parity_difference", False,
                                      "selection rate, max − min over groups"),
    "equalized_odds_difference": ("equalized_odds_difference", False,
                                  "larger of TPR and FPR max − min over groups"),
}


def small_groups(sensitive: pd.Series, min_size: int, merge: bool = False
                 ) -> tuple[pd.Series, dict[str, int]]:
    """Groups with fewer than ``min_size`` units: (labels, left out {group: size}).

    With ``merge`` the small groups are first relabelled "other" (one group); whatever is still
    below ``min_size`` is returned as left out. The labels are returned unchanged otherwise."""
    counts = sensitive.value_counts()
    small = [g for g, n in counts.items() if n < min_size]
    if merge and len(small) > 0:
        sensitive = sensitive.where(~sensitive.isin(small), "other")
        counts = sensitive.value_counts()
    return sensitive, {str(g): int(n) for g, n in sorted(counts.items(), key=lambda kv: str(kv[0]))
                       if n < min_size}


def decision_metrics(y_true: Any, y_pred: Any, sensitive: pd.Series | np.ndarray,
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                     min_group_size: int = 30, pos_label: Any = 1, merge_small: bool = False) -> dict:
    """Fairness of binary decisions per protected group, with bootstrap intervals over rows.

    y_true, y_pred, sensitive: [n]. Point values come from fairlearn (``MetricFrame`` with
    accuracy, selection rate, TPR, FPR, count; ``demographic_parity_difference``,
    ``equalized_odds_difference``); a rate whose denominator is zero is reported as NaN (fairlearn
    returns 0 there) with a warning. Intervals resample rows; a replicate in which a statistic is
    undefined (its group absent, no positives) is skipped for that statistic. Groups with fewer
    than ``min_group_size`` rows are left out of the disparities (``small_groups`` lists them;
    ``merge_small`` first merges them into one group "other"); the disparities are NaN when fewer
    than two groups remain.

    ``gaps``: the accuracy disparity and the demographic-parity difference next to their values under
    permuted group labels (``stats.group_gap``: ``raw_gap``, ``null_gap``, the excess ``value`` with
    its permutation interval, the between-group variance's ``p_value``).

    Returns ``{"metrics": {name: record}, "by_group": {group: {"count": int, metric: record}},
    "small_groups": {group: count}, "gaps": {name: record}, "warnings": [str], "n": int}``.
    """
    from fairlearn.metrics import (MetricFrame, count, demographic_parity_difference,
                                   equalized_odds_difference, false_positive_rate, selection_rate,
                                   true_positive_rate)
    from sklearn.metrics import accuracy_score

    _check_boot(n_boot, alpha)
    yt, yp = _binary(y_true, "y_true", pos_label), _binary(y_pred, "y_pred", pos_label)
    sens = pd.Series(np.asarray(sensitive).ravel())
    if not len(yt) == len(yp) == len(sens):
        raise UserError(f"decision metrics: y_true, y_pred and sensitive have lengths {len(yt)}, "
                        f"{len(yp)}, {len(sens)}; give one entry per example in each")
    if len(yt) == 0:
        raise UserError("decision metrics: no examples; evaluate at least one decision")
    if sens.isna().any():
        raise UserError(f"decision metrics: sensitive attribute missing for "
                        f"{int(sens.isna().sum())} examples; fill or drop them first")
    sens, left_out = small_groups(sens.astype(str) if merge_small else sens, min_group_size, merge_small)
    codes, names = pd.factorize(sens, sort=True)
    G = len(names)
    kept = np.array([str(g) not in left_out for g in names])
    rows = kept[codes]
    sub_codes = pd.factorize(codes[rows], sort=True)[0]

    mf = MetricFrame(metrics={"accuracy": accuracy_score, "selection_rate": selection_rate,
                              "true_positive_rate": true_positive_rate,
                              "false_positive_rate": false_positive_rate, "count": count},
                     y_true=yt, y_pred=yp, sensitive_features=codes)
    point = decision_stats_from_counts(_confusion((2 * yt + yp)[None], codes[None], G))
    point = {k: v[0] for k, v in point.items()}
    fair = {"overall_accuracy": float(mf.overall["accuracy"]),
            "balanced_accuracy": float(point["balanced_accuracy"])}
    nan = float("nan")
    if kept.sum() >= 2:  # disparities over the groups large enough
        yk, pk = yt[rows], yp[rows]
        acc = MetricFrame(metrics=accuracy_score, y_true=yk, y_pred=pk, sensitive_features=sub_codes)
        fair.update(accuracy_disparity=float(acc.difference(method="between_groups")),
                    demographic_parity_difference=float(demographic_parity_difference(
                        yk, pk, sensitive_features=sub_codes)),
                    equalized_odds_difference=float(equalized_odds_difference(
                        yk, pk, sensitive_features=sub_codes)))
    else:
        fair.update(accuracy_disparity=nan, demographic_parity_difference=nan,
                    equalized_odds_difference=nan)

    rng = np.random.default_rng(seed)
    cells = 2 * yt + yp
    reps = []
    for idx in _index_chunks(rng, len(yt), n_boot):
        c = _confusion(cells[idx], codes[idx], G)
        r = decision_stats_from_counts(c)
        spreads = (decision_stats_from_counts(c[:, kept]) if kept.sum() >= 2
                   else {k: np.full(len(idx), np.nan) for k in _SPREADS})
        r.update({k: spreads[k] for k in _SPREADS})
        reps.append(r)
    boot = {k: np.concatenate([r[k] for r in reps]) for k in reps[0]}

    metrics = {}
    for key, (src, hib, unit) in _HEADLINE.items():
        lo, hi, used = _percentile(boot[src], alpha)
        metrics[key] = record(fair[src], lo, hi, higher_is_better=hib, unit=unit, n_boot=used)

    warnings: list[str] = []
    by_group: dict[str, dict] = {}
    for i, g in enumerate(names):
        entry: dict[str, Any] = {"count": int(mf.by_group["count"].iloc[i])}
        for key, (hib, unit) in _GROUP_METRICS.items():
            value = float(mf.by_group[key].iloc[i])
            if np.isnan(point[key][i]):
                value = float("nan")  # fairlearn reports 0 for an undefined rate
            lo, hi, used = _percentile(boot[key][:, i], alpha)
            entry[key] = record(value, lo, hi, higher_is_better=hib, unit=unit, n_boot=used)
        by_group[str(g)] = entry
        if not kept[i]:
            warnings.append(f"group {g!s} has {entry['count']} examples (fewer than "
                            f"{min_group_size}): left out of the disparities")
        for key, label in (("true_positive_rate", "positive"), ("false_positive_rate", "negative")):
            if np.isnan(point[key][i]):
                warnings.append(f"group {g!s} has no {label} examples: its {key} is undefined "
                                "(NaN); equalized_odds_difference counts it as 0")
    if kept.sum() < 2:
        warnings.append(f"fewer than two groups have {min_group_size} examples or more: "
                        "no disparity is reported")
    kept_names = [str(g) for g, k in zip(names, kept) if k]
    gaps = _decision_gaps(np.eye(4)[cells], np.where(rows, np.cumsum(kept)[codes] - 1, -1), kept_names,
                          n_boot, seed, alpha) if kept.sum() >= 2 else {}
    return {"metrics": metrics, "by_group": by_group, "small_groups": left_out, "gaps": gaps,
            "warnings": warnings, "n": int(len(yt))}


_GAP_RATES = {  # disparity: group rate from confusion sums (tn, fp, fn, tp)
    "accuracy_disparity": lambda m: (m[..., _TN] + m[..., _TP]) / m.sum(axis=-1),
    "demographic_parity_difference": lambda m: (m[..., _FP] + m[..., _TP]) / m.sum(axis=-1),
}


def _decision_gaps(conf: np.ndarray, codes: np.ndarray, names: list[str], n_perm: int, seed: int,
                   alpha: float) -> dict:
    """``stats.group_gap`` of accuracy and selection rate: conf [n, 4] one-hot cells, codes [n]
    (−1: a row of a left-out group); group labels permuted among all rows."""
    out = {}
    for key, rate in _GAP_RATES.items():
        r = stats.group_gap(conf, codes, rate, n_perm=n_perm, seed=seed, alpha=alpha)
        out[key] = {**{k: v for k, v in r.items() if k != "gap"}, "raw_gap": r["gap"],
                    "max_group": names[r["max_group"]], "min_group": names[r["min_group"]],
                    "higher_is_better": False, "unit": f"{key} minus its value under permuted groups"}
    return out


def flip_rate(pred_a: Any, pred_b: Any, prob_a: Any | None = None, prob_b: Any | None = None,
              n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Share of decisions that differ between two paired runs, and mean |Δp|.

    pred_a, pred_b: [n] decisions on the same examples (e.g. an example and its counterfactual
    with only the protected attribute changed); prob_a, prob_b: [n] positive-class probabilities
    (optional). Both intervals resample the same rows.
    """
    a, b = np.asarray(pred_a).ravel(), np.asarray(pred_b).ravel()
    if len(a) != len(b):
        raise UserError(f"flip rate: {len(a)} and {len(b)} decisions; pair each example with its "
                        "counterfactual")
    flips = bootstrap_ci((a != b).astype(np.float64), np.mean, n_boot, seed, alpha)
    out = {"flip_rate": record(flips["value"], flips["lo"], flips["hi"], higher_is_better=False,
                               unit="share of decisions", n=flips["n"], n_boot=flips["n_boot"])}
    if prob_a is not None and prob_b is not None:
        pa = np.asarray(prob_a, dtype=np.float64).ravel()
        pb = np.asarray(prob_b, dtype=np.float64).ravel()
        if not len(pa) == len(pb) == len(a):
            raise UserError(f"flip rate: probabilities have lengths {len(pa)}, {len(pb)} but there "
                            f"are {len(a)} decisions; give one probability per decision")
        d = bootstrap_ci(np.abs(pa - pb), np.mean, n_boot, seed, alpha)
        out["mean_abs_delta_p"] = record(d["value"], d["lo"], d["hi"], higher_is_better=False,
                                         unit="probability", n=d["n"], n_boot=d["n_boot"])
    return out


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
