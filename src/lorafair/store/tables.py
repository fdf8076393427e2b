"""Tidy (long) tables of a run's results, built from the result files' contents; no file is read here.

Every function returns a pandas DataFrame with one row per observation and the columns listed in
its constant (``DECISION_COLUMNS``, ...), in that order and with those dtypes, also when empty. The
same tables are written beside ``compare.json`` (``decisions.csv``, ``decisions.parquet``,
``metrics.parquet``) so that a reader without lorafair can load them.

decisions — one row per arm × metric, from compare.json:
  arm, metric, rank (LoRA rank, <NA> for base and full), variant (``lora``, ``rslora``, ``dora``,
  ``base``, ``full``), value / lo / hi (the arm's own value, seeds pooled, with its 95% interval),
  minus_full (arm − full), minus_full_lo90 / minus_full_hi90 (90% interval, the one equivalence
  reads), minus_full_lo95 / minus_full_hi95 (95% interval), delta (the margin δ; NaN without one),
  decision (``equivalent``, ``worse``, ``better``, ``inconclusive``, ...), fitted (whether the arm
  passed the fit check; True where compare.json does not say), primary (whether the metric is a
  primary one; <NA> where compare.json does not say), higher_is_better (<NA> when the metric has no
  direction), n_seeds, n_units.
metrics — one row per task × arm × seed × metric (× group), from the evaluation summaries:
  task, arm, seed, kind (``overall``, ``group`` or ``gap``), group (<NA> for overall), metric,
  value, lo, hi, higher_is_better, unit.
training — one row per arm × seed × logged step: arm, seed, step, loss, val_loss (NaN between
  validation steps), lr, tokens_per_s.
items — one row per evaluated item: arm, seed, then the task's own columns (for toxicity: prompt,
  continuation, the scorer's scores, the identity group, ...).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from lorafair.arms.names import arm_order, arm_rank

DECISION_COLUMNS = {
    "arm": "string", "metric": "string", "rank": "Int64", "variant": "string",
    "value": "float64", "lo": "float64", "hi": "float64",
    "minus_full": "float64", "minus_full_lo90": "float64", "minus_full_hi90": "float64",
    "minus_full_lo95": "float64", "minus_full_hi95": "float64", "delta": "float64",
    "decision": "string", "fitted": "bool", "primary": "boolean", "higher_is_better": "boolean",
    "n_seeds": "Int64", "n_units": "Int64",
}
METRIC_COLUMNS = {
    "task": "string", "arm": "string", "seed": "int64", "kind": "string", "group": "string", "metric": "string",
    "value": "float64", "lo": "float64", "hi": "float64", "higher_is_better": "boolean", "unit": "string",
}
TRAINING_COLUMNS = {
    "arm": "string", "seed": "int64", "step": "int64", "loss": "float64", "val_loss": "float64",
    "lr": "float64", "tokens_per_s": "float64",
}


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def _table(rows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(columns))
    for col, dtype in columns.items():
        if dtype == "boolean" or dtype == "Int64":
            df[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                                for v in df[col]], dtype=dtype)
        else:
            df[col] = df[col].astype(dtype)
    return df


def decision_row(arm: str, metric: str, decision: dict, difference: dict | None, pooled: dict | None) -> dict:
    """One decisions row from compare.json's entries for (arm, metric): ``decision`` from
    ``decisions``, ``difference`` from ``minus_full``, ``pooled`` from ``pooled``. The one place that
    knows the decision record's fields: ``fitted`` (True when absent), ``primary`` (None when
    absent), the 90% interval ``lo90``/``hi90`` (the difference record's when the decision lacks it)."""
    diff, own = difference or {}, pooled or {}
    variant, rank = arm_rank(arm)

    def pick(name: str) -> float:
        return _num(decision.get(name, diff.get(name)))

    hib = diff.get("higher_is_better", own.get("higher_is_better"))
    return {
        "arm": arm, "metric": metric, "rank": rank, "variant": variant,
        "value": _num(own.get("value")), "lo": _num(own.get("lo")), "hi": _num(own.get("hi")),
        "minus_full": pick("value"), "minus_full_lo90": pick("lo90"), "minus_full_hi90": pick("hi90"),
        "minus_full_lo95": pick("lo"), "minus_full_hi95": pick("hi"), "delta": _num(decision.get("margin")),
        "decision": str(decision.get("decision", "undefined")),
        "fitted": bool(decision.get("fitted", True)),
        "primary": decision.get("primary") if isinstance(decision.get("primary"), bool) else None,
        "higher_is_better": hib if isinstance(hib, bool) else None,
        "n_seeds": decision.get("n_seeds", diff.get("n_seeds")),
        "n_units": decision.get("n_units", diff.get("n_units")),
    }


def decisions_table(compare: dict) -> pd.DataFrame:
    """One row per arm × metric decided in ``compare`` (compare.json's content), arms in study order."""
    rows = []
    for arm in sorted(compare.get("decisions") or {}, key=arm_order):
        for metric, d in sorted((compare["decisions"][arm] or {}).items()):
            if isinstance(d, dict):
                diff = ((compare.get("minus_full") or {}).get(arm) or {}).get(metric)
                own = ((compare.get("pooled") or {}).get(arm) or {}).get(metric)
                rows.append(decision_row(arm, metric, d, diff if isinstance(diff, dict) else None,
                                         own if isinstance(own, dict) else None))
    return _table(rows, DECISION_COLUMNS)


def _metric_row(task: str, arm: str, seed: int, kind: str, group: str | None, metric: str, r: dict) -> dict:
    hib = r.get("higher_is_better")
    return {"task": task, "arm": arm, "seed": seed, "kind": kind, "group": group, "metric": metric,
            "value": _num(r.get("value")), "lo": _num(r.get("lo")), "hi": _num(r.get("hi")),
            "higher_is_better": hib if isinstance(hib, bool) else None,
            "unit": r.get("unit") if isinstance(r.get("unit"), str) else None}


def _is_record(r: Any) -> bool:
    return isinstance(r, dict) and "value" in r and (r["value"] is None or isinstance(r["value"], (int, float)))


def metrics_table(evals: dict[str, dict[tuple[str, int], dict]]) -> pd.DataFrame:
    """One row per task × arm × seed × metric: headline metrics (kind ``overall``), per-group
    records (``group``) and group gaps (``gap``). ``evals``: task -> (arm, seed) -> summary in the
    result contract's shape (``lorafair.stats.results``)."""
    rows = []
    for task in sorted(evals):
        for (arm, seed), s in sorted(evals[task].items(), key=lambda kv: (arm_order(kv[0][0]), kv[0][1])):
            rows += [_metric_row(task, arm, seed, "overall", None, m, r)
                     for m, r in (s.get("metrics") or {}).items() if _is_record(r)]
            for grp, ms in (s.get("groups") or {}).items():
                rows += [_metric_row(task, arm, seed, "group", grp, m, r)
                         for m, r in (ms or {}).items() if _is_record(r)]
            rows += [_metric_row(task, arm, seed, "gap", None, m, r)
                     for m, r in (s.get("gaps") or {}).items() if _is_record(r)]
    return _table(rows, METRIC_COLUMNS)


def training_table(logs: dict[tuple[str, int], list[dict]], val_curves: dict[tuple[str, int], list[dict]]
                   ) -> pd.DataFrame:
    """One row per arm × seed × logged step; the validation losses of ``val_curves`` (step, val_loss)
    joined on their step."""
    rows = []
    for arm, seed in sorted(set(logs) | set(val_curves), key=lambda k: (arm_order(k[0]), k[1])):
        by_step: dict[int, dict] = {}
        for r in logs.get((arm, seed), []):
            by_step[int(r["step"])] = {"loss": _num(r.get("loss")), "lr": _num(r.get("lr")),
                                       "tokens_per_s": _num(r.get("tokens_per_s")), "val_loss": _num(r.get("val_loss"))}
        for r in val_curves.get((arm, seed), []):
            row = by_step.setdefault(int(r["step"]), {})
            row["val_loss"] = _num(r.get("val_loss"))
        rows += [{"arm": arm, "seed": seed, "step": step, **vals} for step, vals in sorted(by_step.items())]
    return _table(rows, TRAINING_COLUMNS)


def items_table(rows: dict[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """Every arm × seed's per-item rows stacked, with ``arm`` and ``seed`` as the first columns."""
    parts = []
    for (arm, seed), df in sorted(rows.items(), key=lambda kv: (arm_order(kv[0][0]), kv[0][1])):
        df = df.drop(columns=[c for c in ("arm", "seed") if c in df.columns])
        parts.append(df.assign(arm=arm, seed=seed)[["arm", "seed", *df.columns]])
    if not parts:
        return pd.DataFrame({"arm": pd.Series(dtype="string"), "seed": pd.Series(dtype="int64")})
    out = pd.concat(parts, ignore_index=True)
    out["arm"] = out["arm"].astype("string")
    out["seed"] = out["seed"].astype("int64")
    return out


__all__ = ["DECISION_COLUMNS", "METRIC_COLUMNS", "TRAINING_COLUMNS", "decision_row", "decisions_table",
           "metrics_table", "training_table", "items_table"]
