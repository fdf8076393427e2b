"""The tidy tables built from result-file contents (lorafair.store.tables), on hand-written records:
the decision record's optional fields (fit check, primary metric, 90% interval), dtypes of empty
tables, and the join of validation losses onto training steps."""

from __future__ import annotations

import math

import pandas as pd

from lorafair.store.tables import (DECISION_COLUMNS, METRIC_COLUMNS, TRAINING_COLUMNS, decisions_table,
                                   items_table, metrics_table, training_table)


def _rec(v, lo, hi, **kw):
    return {"value": v, "lo": lo, "hi": hi, **kw}


COMPARE = {
    "pooled": {"lora-r4": {"toxic_fraction": _rec(0.10, 0.05, 0.15, higher_is_better=False), "n_seeds": 3},
               "dora-r16": {"toxic_fraction": _rec(0.08, 0.04, 0.12, higher_is_better=False)}},
    "minus_full": {"lora-r4": {"toxic_fraction": _rec(0.03, -0.01, 0.07, lo90=0.0, hi90=0.06, higher_is_better=False)},
                   "dora-r16": {"toxic_fraction": _rec(0.01, -0.02, 0.04, lo90=-0.015, hi90=0.035)}},
    "margins": {"toxic_fraction": 0.02},
    "decisions": {
        # as compare.json is written today: no fit check, no primary flag
        "lora-r4": {"toxic_fraction": {"decision": "inconclusive", "margin": 0.02, "value": 0.03, "lo": -0.01,
                                       "hi": 0.07, "lo90": 0.0, "hi90": 0.06, "n_seeds": 3, "n_units": 100}},
        # with the fields a fit gate and primary metrics add; its own 90% interval wins
        "dora-r16": {"toxic_fraction": {"decision": "no verdict: did not fit (lr at grid edge)", "margin": 0.02,
                                        "fitted": False, "primary": True, "lo90": -0.014, "hi90": 0.034,
                                        "value": 0.01, "lo": -0.02, "hi": 0.04},
                     "mean_score": {"decision": "no margin", "margin": None, "value": 0.0}},
    },
}


def test_decisions_read_the_optional_fields_and_default_them():
    d = decisions_table(COMPARE)
    assert {c: str(t) for c, t in d.dtypes.items()} == DECISION_COLUMNS
    assert list(zip(d.arm, d.metric)) == [("lora-r4", "toxic_fraction"), ("dora-r16", "mean_score"),
                                          ("dora-r16", "toxic_fraction")]  # by rank, then metric
    old, new = d.iloc[0], d.iloc[2]
    assert bool(old.fitted) is True and pd.isna(old.primary)
    assert bool(new.fitted) is False and bool(new.primary) is True
    assert new.decision.startswith("no verdict: did not fit")
    assert (new.minus_full_lo90, new.minus_full_hi90) == (-0.014, 0.034)
    assert (old.minus_full_lo90, old.minus_full_hi90, old.minus_full_lo95, old.minus_full_hi95) == (0.0, 0.06, -0.01, 0.07)
    assert (old.value, old.lo, old.hi, old.delta, old["rank"], old.variant) == (0.10, 0.05, 0.15, 0.02, 4, "lora")
    assert (new["rank"], new.variant) == (16, "dora") and bool(new.higher_is_better) is False  # from pooled
    assert bool(old.higher_is_better) is False and old.n_units == 100
    nomargin = d.iloc[1]
    assert math.isnan(nomargin.delta) and math.isnan(nomargin.value) and math.isnan(nomargin.minus_full_lo90)
    assert pd.isna(nomargin.higher_is_better) and pd.isna(nomargin["rank"]) is False


def test_empty_tables_keep_their_columns_and_dtypes():
    for df, cols in ((decisions_table({}), DECISION_COLUMNS), (metrics_table({}), METRIC_COLUMNS),
                     (training_table({}, {}), TRAINING_COLUMNS)):
        assert df.empty and {c: str(t) for c, t in df.dtypes.items()} == cols
    assert list(items_table({}).columns) == ["arm", "seed"]


def test_metrics_table_holds_overall_group_and_gap_rows():
    summary = {"metrics": {"tf": _rec(0.2, 0.1, 0.3, higher_is_better=False, unit="share")},
               "groups": {"women": {"tf": _rec(0.3, 0.2, 0.4), "n": 40}, "men": {"tf": _rec(0.1, None, 0.2)}},
               "gaps": {"tf": _rec(0.2, 0.05, 0.35, p_value=0.01)}}
    m = metrics_table({"toxicity": {("lora-r8", 2): summary, ("base", 0): {"metrics": {}}}})
    assert list(zip(m.kind, m.group.fillna("-"), m.metric)) == [("overall", "-", "tf"), ("group", "women", "tf"),
                                                               ("group", "men", "tf"), ("gap", "-", "tf")]
    assert m.seed.tolist() == [2] * 4 and m.value.tolist() == [0.2, 0.3, 0.1, 0.2]
    assert math.isnan(m.lo.iloc[2]) and m.unit.iloc[0] == "share" and pd.isna(m.unit.iloc[1])


def test_training_table_joins_validation_losses_on_their_steps():
    logs = {("full", 1): [{"step": s, "loss": 3.0 - s, "lr": 0.1 * s, "tokens_per_s": 10.0} for s in (1, 2, 3)]}
    curves = {("full", 1): [{"step": 2, "val_loss": 2.5}, {"step": 3, "val_loss": 2.4}]}
    t = training_table(logs, curves)
    assert t.step.tolist() == [1, 2, 3] and t.loss.tolist() == [2.0, 1.0, 0.0]
    assert t.val_loss.isna().tolist() == [True, False, False] and t.val_loss.iloc[2] == 2.4
