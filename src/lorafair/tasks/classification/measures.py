"""Decision measures of binary decisions per protected group (accuracy, selection rate, TPR, FPR and
their spreads, checked against fairlearn in the tests), the group-gap permutation nulls, and the
counterfactual flip rate.

Records and intervals as in :mod:`lorafair.stats.metrics`; the resampling unit is the row (example).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lorafair.stats import intervals as stats
from lorafair.errors import UserError
from lorafair.stats.metrics import (bootstrap_ci, check_boot, expected_events, index_chunks, percentile, record,
                                    small_groups)


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


def decision_metrics(y_true: Any, y_pred: Any, sensitive: pd.Series | np.ndarray,
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                     min_group_size: int = 30, pos_label: Any = 1, merge_small: bool = False,
                     min_group_events: float = 5.0) -> dict:
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
    its permutation interval, the between-group variance's ``p_value``). The demographic-parity gap
    also carries each kept group's expected positive decisions (:func:`selection_events`) and
    ``floor``: true when one is below ``min_group_events``.

    Returns ``{"metrics": {name: record}, "by_group": {group: {"count": int, metric: record}},
    "small_groups": {group: count}, "gaps": {name: record}, "warnings": [str], "n": int}``.
    """
    check_boot(n_boot, alpha)
    yt, yp, sens = _checked(y_true, y_pred, sensitive, pos_label)
    sens, left_out = small_groups(sens.astype(str) if merge_small else sens, min_group_size, merge_small)
    codes, names = pd.factorize(sens, sort=True)
    kept = np.array([str(g) not in left_out for g in names])
    rows = kept[codes]
    mf, point, fair = _point_values(yt, yp, codes, len(names), kept)
    cells = 2 * yt + yp
    boot = _bootstrap(cells, codes, len(names), kept, n_boot, seed)
    metrics = {}
    for key, (src, hib, unit) in _HEADLINE.items():
        lo, hi, used = percentile(boot[src], alpha)
        metrics[key] = record(fair[src], lo, hi, higher_is_better=hib, unit=unit, n_boot=used)
    by_group, warnings = _per_group(names, kept, mf, point, boot, alpha, min_group_size)
    kept_names = [str(g) for g, k in zip(names, kept) if k]
    gaps = _decision_gaps(np.eye(4)[cells], np.where(rows, np.cumsum(kept)[codes] - 1, -1), kept_names,
                          n_boot, seed, alpha) if kept.sum() >= 2 else {}
    if gaps:
        e = selection_events(_confusion(cells[None], codes[None], len(names))[0][kept], kept_names)
        low = min(e, key=e.get)
        gaps["demographic_parity_difference"].update(floor=e[low] < min_group_events, expected_events=e,
                                                     min_group_events=float(min_group_events))
        if e[low] < min_group_events:
            warnings.append(f"demographic_parity_difference gap at the floor: group {low} expects {e[low]:.1f} "
                            f"decisions of the rarer kind (fewer than {min_group_events:g}), so the gap between "
                            "groups says nothing")
    return {"metrics": metrics, "by_group": by_group, "small_groups": left_out, "gaps": gaps,
            "warnings": warnings, "n": int(len(yt))}


def _checked(y_true: Any, y_pred: Any, sensitive: Any, pos_label: Any) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """The labels and decisions as 0/1 arrays and the groups as a Series; UserError on bad input."""
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
    return yt, yp, sens


def _point_values(yt: np.ndarray, yp: np.ndarray, codes: np.ndarray, G: int, kept: np.ndarray):
    """fairlearn's per-group frame, the counts-based statistics [G] and the headline point values
    (disparities over the groups ``kept`` only, NaN with fewer than two)."""
    from fairlearn.metrics import (MetricFrame, count, demographic_parity_difference,
                                   equalized_odds_difference, false_positive_rate, selection_rate,
                                   true_positive_rate)
    from sklearn.metrics import accuracy_score

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
    return mf, point, fair


def _bootstrap(cells: np.ndarray, codes: np.ndarray, G: int, kept: np.ndarray, n_boot: int,
               seed: int) -> dict[str, np.ndarray]:
    """Every statistic over ``n_boot`` row resamples: name -> [n_boot] or [n_boot, G]."""
    rng = np.random.default_rng(seed)
    reps = []
    for idx in index_chunks(rng, len(cells), n_boot):
        c = _confusion(cells[idx], codes[idx], G)
        r = decision_stats_from_counts(c)
        spreads = (decision_stats_from_counts(c[:, kept]) if kept.sum() >= 2
                   else {k: np.full(len(idx), np.nan) for k in _SPREADS})
        r.update({k: spreads[k] for k in _SPREADS})
        reps.append(r)
    return {k: np.concatenate([r[k] for r in reps]) for k in reps[0]}


def _per_group(names, kept: np.ndarray, mf, point: dict, boot: dict, alpha: float,
               min_group_size: int) -> tuple[dict[str, dict], list[str]]:
    """group -> {count, measure: record}, and the warnings (small groups, undefined rates)."""
    warnings: list[str] = []
    by_group: dict[str, dict] = {}
    for i, g in enumerate(names):
        entry: dict[str, Any] = {"count": int(mf.by_group["count"].iloc[i])}
        for key, (hib, unit) in _GROUP_METRICS.items():
            value = float(mf.by_group[key].iloc[i])
            if np.isnan(point[key][i]):
                value = float("nan")  # fairlearn reports 0 for an undefined rate
            lo, hi, used = percentile(boot[key][:, i], alpha)
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
    return by_group, warnings


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


def selection_events(sums: np.ndarray, names: list[str]) -> dict[str, float]:
    """Expected positive decisions per group (``stats.metrics.expected_events``, on the rarer side):
    the events behind the demographic-parity difference. sums: confusion counts ``[G, 4]``."""
    e = expected_events(sums[:, _FP] + sums[:, _TP], sums.sum(axis=1))
    return {str(g): float(x) for g, x in zip(names, e)}


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
