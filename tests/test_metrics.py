"""Tests for lorafair.stats.metrics against hand computations, scipy and fairlearn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from fairlearn.metrics import (MetricFrame, demographic_parity_difference,
                               equalized_odds_difference, false_positive_rate, selection_rate,
                               true_positive_rate)
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from lorafair.errors import UserError
from lorafair.stats.metrics import bootstrap_ci, paired_bootstrap_diff
from lorafair.tasks.classification.measures import decision_metrics, flip_rate
from lorafair.tasks.toxicity.measures import (group_toxicity, paired_toxicity_diff, toxicity_gap_differences,
                                              toxicity_metrics)

RECORD_KEYS = {"value", "lo", "hi", "higher_is_better", "unit"}


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_contains_value_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = bootstrap_ci(rng.normal(2.0, 1.0, 50), n_boot=2000)
    large = bootstrap_ci(rng.normal(2.0, 1.0, 5000), n_boot=2000)
    for r in (small, large):
        assert r["lo"] < r["value"] < r["hi"]
    ratio = (small["hi"] - small["lo"]) / (large["hi"] - large["lo"])
    assert 7 < ratio < 14  # width ~ 1/sqrt(n): sqrt(100) = 10
    # normal theory: 95% half-width of a mean is 1.96 sd / sqrt(n)
    assert large["hi"] - large["lo"] == pytest.approx(2 * 1.96 / np.sqrt(5000), rel=0.1)


def test_bootstrap_matches_scipy_percentile_interval():
    x = np.random.default_rng(3).exponential(1.0, 400)
    ours = bootstrap_ci(x, np.median, n_boot=4000, seed=5)
    ref = scipy.stats.bootstrap((x,), np.median, n_resamples=4000, method="percentile",
                                random_state=np.random.default_rng(9)).confidence_interval
    assert ours["value"] == pytest.approx(np.median(x))
    assert ours["lo"] == pytest.approx(ref.low, abs=0.03)
    assert ours["hi"] == pytest.approx(ref.high, abs=0.03)


def test_bootstrap_deterministic_and_general_stat():
    x = np.arange(20, dtype=float).reshape(10, 2)  # rows are units
    a = bootstrap_ci(x, lambda r: r[:, 0].sum() / r[:, 1].sum(), n_boot=300, seed=4)
    b = bootstrap_ci(x, lambda r: r[:, 0].sum() / r[:, 1].sum(), n_boot=300, seed=4)
    assert a == b
    assert a["value"] == pytest.approx(90 / 100)
    assert a["n"] == 10 and a["n_boot"] == 300


def test_paired_diff_identical_is_exactly_zero():
    x = np.random.default_rng(0).random(77)
    r = paired_bootstrap_diff(x, x.copy(), n_boot=500)
    assert (r["value"], r["lo"], r["hi"]) == (0.0, 0.0, 0.0)


def test_paired_diff_is_tighter_than_unpaired():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 300)
    a, b = base, base + 0.1 + rng.normal(0, 0.01, 300)
    r = paired_bootstrap_diff(a, b, n_boot=1000)
    assert r["value"] == pytest.approx(a.mean() - b.mean())
    assert r["lo"] < r["value"] < r["hi"] < 0  # paired: the shared noise cancels
    assert r["hi"] - r["lo"] < 0.01
    with pytest.raises(UserError):
        paired_bootstrap_diff(a, b[:-1])


def _hand_frame() -> pd.DataFrame:
    scores = {"p1": [0.1, 0.7, 0.2], "p2": [0.6, 0.9, 0.5], "p3": [0.0, 0.1, 0.3]}
    group = {"p1": "x", "p2": "x", "p3": "y"}
    return pd.DataFrame([{"prompt_id": p, "sample": i, "score": s, "group": group[p]}
                         for p, ss in scores.items() for i, s in enumerate(ss)])


def test_toxicity_hand_values():
    r = toxicity_metrics(_hand_frame(), n_boot=200)
    # toxic (>= 0.5): p1 one of 3, p2 three of 3 (0.5 counts), p3 none
    assert r["toxic_fraction"]["value"] == pytest.approx(4 / 9)
    assert r["expected_max_toxicity"]["value"] == pytest.approx((0.7 + 0.9 + 0.3) / 3)
    assert r["toxicity_probability"]["value"] == pytest.approx(2 / 3)
    assert r["mean_score"]["value"] == pytest.approx(3.4 / 9)
    for rec in r.values():
        assert RECORD_KEYS <= rec.keys() and rec["higher_is_better"] is False
        assert rec["lo"] <= rec["value"] <= rec["hi"]
        assert rec["n_prompts"] == 3
    # prompt-level resampling: toxicity probability can only take values k/3
    lo3 = r["toxicity_probability"]["lo"] * 3
    assert lo3 == pytest.approx(round(lo3))


def test_toxic_fraction_counts_continuations_not_prompts():
    df = pd.DataFrame({"prompt_id": ["a", "b", "b", "b"], "sample": [0, 0, 1, 2],
                       "score": [0.9, 0.1, 0.1, 0.1]})
    r = toxicity_metrics(df, n_boot=50)
    assert r["toxic_fraction"]["value"] == pytest.approx(1 / 4)
    assert r["toxicity_probability"]["value"] == pytest.approx(1 / 2)
    assert r["mean_score"]["value"] == pytest.approx(1.2 / 4)


def test_toxicity_interval_over_prompts_matches_bootstrap_ci():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"prompt_id": np.repeat(np.arange(200), 4),
                       "sample": np.tile(np.arange(4), 200), "score": rng.beta(1, 3, 800)})
    r = toxicity_metrics(df, n_boot=1000, seed=1)
    maxes = df.groupby("prompt_id")["score"].max().to_numpy()
    ref = bootstrap_ci(maxes, n_boot=1000, seed=1)
    assert r["expected_max_toxicity"]["value"] == pytest.approx(ref["value"])
    assert r["expected_max_toxicity"]["lo"] == pytest.approx(ref["lo"], abs=0.01)
    assert r["expected_max_toxicity"]["hi"] == pytest.approx(ref["hi"], abs=0.01)


def test_group_toxicity_hand_gap():
    r = group_toxicity(_hand_frame(), "group", n_boot=400, min_group_size=1)
    assert r["groups"]["x"]["toxic_fraction"]["value"] == pytest.approx(4 / 6)
    assert r["groups"]["y"]["toxic_fraction"]["value"] == 0.0
    gap = r["gap"]
    assert gap["toxic_fraction"]["raw_gap"] == pytest.approx(4 / 6)
    assert gap["expected_max_toxicity"]["raw_gap"] == pytest.approx(0.8 - 0.3)
    assert gap["toxicity_probability"]["raw_gap"] == pytest.approx(1.0)
    assert gap["mean_score"]["raw_gap"] == pytest.approx(0.5 - 0.4 / 3)
    assert gap["toxic_fraction"]["max_group"] == "x" and gap["toxic_fraction"]["min_group"] == "y"
    # permuting the labels of 3 prompts (y is one of them, equally likely): toxic-fraction gaps
    # 1/6 (y = p1), 5/6 (y = p2), 4/6 (y = p3); their mean is what noise alone gives
    assert gap["toxic_fraction"]["null_gap"] == pytest.approx(10 / 18, abs=0.04)
    assert gap["toxic_fraction"]["value"] == pytest.approx(4 / 6 - gap["toxic_fraction"]["null_gap"])
    # between-group variance: observed 1/9, reached by the arrangements y = p2 and y = p3
    assert gap["toxic_fraction"]["p_value"] == pytest.approx(2 / 3, abs=0.07)
    assert r["small_groups"] == {}
    with pytest.raises(UserError):
        group_toxicity(_hand_frame().assign(group=None), "group")


def test_group_toxicity_small_groups_left_out_or_merged():
    df = pd.concat([_hand_frame(), _hand_frame().assign(prompt_id=lambda d: d["prompt_id"] + "b",
                                                        group=lambda d: d["group"].map({"x": "x", "y": "z"}))])
    r = group_toxicity(df, "group", n_boot=100, min_group_size=2)
    assert r["small_groups"] == {"y": 1, "z": 1} and r["gap"] == {}  # only x is large enough
    assert set(r["groups"]) == {"x", "y", "z"}  # still measured, and listed
    merged = group_toxicity(df, "group", n_boot=100, min_group_size=2, merge_small=True)
    assert merged["small_groups"] == {} and set(merged["groups"]) == {"x", "other"}
    assert merged["gap"]["toxic_fraction"]["raw_gap"] == pytest.approx(8 / 12)


def test_paired_toxicity_identical_zero_and_sign():
    df = _hand_frame()
    r = paired_toxicity_diff(df, df.copy(), n_boot=200)
    for rec in r.values():
        assert (rec["value"], rec["lo"], rec["hi"]) == (0.0, 0.0, 0.0)
    less = df.assign(score=df["score"] * 0.5)
    d = paired_toxicity_diff(less, df, n_boot=200)
    assert d["mean_score"]["value"] == pytest.approx(-1.7 / 9)
    assert d["mean_score"]["hi"] < 0
    # halved, no continuation reaches 0.5 (p1 max 0.35, p2 max 0.45): probability 0 vs 2/3
    assert d["toxicity_probability"]["value"] == pytest.approx(0 - 2 / 3)


def test_toxicity_bad_input():
    with pytest.raises(UserError, match="score"):
        toxicity_metrics(pd.DataFrame({"prompt_id": [1]}))
    with pytest.raises(UserError, match="share no prompt_id"):
        paired_toxicity_diff(_hand_frame(), _hand_frame().assign(prompt_id="zz"))


# ----------------------------------------------------------------------------- decisions


def test_decision_metrics_hand_case():
    # group A: tp=2 fn=1 tn=1 fp=1 -> acc .6, sel .6, tpr 2/3, fpr 1/2
    # group B: tp=1 fn=0 tn=4 fp=0 -> acc 1, sel .2, tpr 1, fpr 0
    y_true = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    y_pred = [1, 1, 0, 0, 1, 1, 0, 0, 0, 0]
    group = ["A"] * 5 + ["B"] * 5
    r = decision_metrics(y_true, y_pred, pd.Series(group), n_boot=300, min_group_size=5)
    m, g = r["metrics"], r["by_group"]
    assert m["accuracy"]["value"] == pytest.approx(0.8)
    assert m["balanced_accuracy"]["value"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m["accuracy_disparity"]["value"] == pytest.approx(0.4)
    assert m["demographic_parity_difference"]["value"] == pytest.approx(0.4)
    assert m["equalized_odds_difference"]["value"] == pytest.approx(0.5)
    assert g["A"]["true_positive_rate"]["value"] == pytest.approx(2 / 3)
    assert g["A"]["false_positive_rate"]["value"] == pytest.approx(0.5)
    assert g["B"]["selection_rate"]["value"] == pytest.approx(0.2)
    assert g["B"]["count"] == 5
    # 4 positive decisions of 10: each group of 5 expects 5 × 0.4 = 2 < 5, the parity gap's floor
    assert r["warnings"] == ["demographic_parity_difference gap at the floor: group A expects 2.0 decisions of the "
                             "rarer kind (fewer than 5), so the gap between groups says nothing"]
    assert r["small_groups"] == {}
    group_records = [v for e in g.values() for v in e.values() if isinstance(v, dict)]
    for rec in list(m.values()) + group_records:
        assert RECORD_KEYS <= rec.keys()
    assert m["accuracy"]["higher_is_better"] is True
    assert m["accuracy_disparity"]["higher_is_better"] is False


def test_decision_metrics_match_fairlearn():
    rng = np.random.default_rng(11)
    n = 900
    sens = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    y_true = rng.integers(0, 2, n)
    y_pred = np.where(rng.random(n) < np.where(sens == "c", 0.6, 0.85), y_true, 1 - y_true)
    r = decision_metrics(y_true, y_pred, sens, n_boot=400)
    mf = MetricFrame(metrics={"accuracy": accuracy_score, "selection_rate": selection_rate,
                              "true_positive_rate": true_positive_rate,
                              "false_positive_rate": false_positive_rate},
                     y_true=y_true, y_pred=y_pred, sensitive_features=sens)
    for grp in ["a", "b", "c"]:
        for key in mf.by_group.columns:
            assert r["by_group"][grp][key]["value"] == pytest.approx(mf.by_group.loc[grp, key])
    m = r["metrics"]
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["demographic_parity_difference"]["value"] == pytest.approx(
        demographic_parity_difference(y_true, y_pred, sensitive_features=sens))
    assert m["equalized_odds_difference"]["value"] == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=sens))
    acc = mf.by_group["accuracy"]
    assert m["accuracy_disparity"]["value"] == pytest.approx(acc.max() - acc.min())
    for rec in m.values():
        assert rec["lo"] <= rec["value"] <= rec["hi"] and rec["n_boot"] == 400
    assert r["warnings"] == []


def test_decision_bootstrap_replicates_match_fairlearn_on_a_resample():
    # the vectorised replicate statistics equal fairlearn on the same resampled rows
    from lorafair.tasks.classification.measures import _confusion, decision_stats_from_counts

    rng = np.random.default_rng(5)
    n = 120
    sens = rng.integers(0, 3, n)
    y_true, y_pred = rng.integers(0, 2, n), rng.integers(0, 2, n)
    idx = rng.integers(0, n, size=(2, n))
    st = decision_stats_from_counts(_confusion((2 * y_true + y_pred)[idx], sens[idx], 3))
    for b in range(2):
        yt, yp, s = y_true[idx[b]], y_pred[idx[b]], sens[idx[b]]
        assert st["equalized_odds_difference"][b] == pytest.approx(
            equalized_odds_difference(yt, yp, sensitive_features=s))
        assert st["demographic_parity_difference"][b] == pytest.approx(
            demographic_parity_difference(yt, yp, sensitive_features=s))
        assert st["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(yt, yp))


def test_decision_small_group_and_undefined_rates():
    n = 200
    sens = np.array(["big"] * (n - 1) + ["tiny"])
    y_true = np.array([1, 0] * 99 + [1, 0])  # tiny group: one row, a negative
    y_pred = y_true.copy()
    r = decision_metrics(y_true, y_pred, sens, n_boot=500, min_group_size=1)
    tiny = r["by_group"]["tiny"]
    assert np.isnan(tiny["true_positive_rate"]["value"])  # no positives: undefined, not 0
    assert tiny["false_positive_rate"]["value"] == 0.0
    # the tiny group is absent from about (1 - 1/200)^200 = 37% of resamples
    used = tiny["accuracy"]["n_boot"]
    assert 250 < used < 400
    assert r["metrics"]["accuracy_disparity"]["n_boot"] == used
    assert r["metrics"]["accuracy"]["n_boot"] == 500
    assert any("no positive examples" in w for w in r["warnings"])


def test_small_groups_left_out_of_disparities_or_merged():
    """COMPAS-like: two large groups and two of 2 rows that would otherwise decide the max − min."""
    rng = np.random.default_rng(3)
    sens = np.array(["a"] * 100 + ["b"] * 100 + ["c"] * 2 + ["d"] * 2)
    y_true = rng.integers(0, 2, 204)
    y_pred = y_true.copy()
    y_pred[200:] = 1 - y_true[200:]  # the tiny groups are always wrong: accuracy 0
    r = decision_metrics(y_true, y_pred, sens, n_boot=200)
    assert r["small_groups"] == {"c": 2, "d": 2}
    assert r["metrics"]["accuracy_disparity"]["value"] == 0.0  # a and b are both perfect
    assert sum("left out of the disparities" in w for w in r["warnings"]) == 2
    assert r["by_group"]["c"]["count"] == 2  # still reported per group
    every = decision_metrics(y_true, y_pred, sens, n_boot=200, min_group_size=1)
    assert every["metrics"]["accuracy_disparity"]["value"] == 1.0
    merged = decision_metrics(y_true, y_pred, sens, n_boot=200, min_group_size=4, merge_small=True)
    assert merged["small_groups"] == {} and merged["by_group"]["other"]["count"] == 4
    assert merged["metrics"]["accuracy_disparity"]["value"] == 1.0
    alone = decision_metrics(y_true, y_pred, sens, n_boot=50, min_group_size=101)
    assert np.isnan(alone["metrics"]["accuracy_disparity"]["value"])


def test_decision_bad_input():
    with pytest.raises(UserError, match="lengths"):
        decision_metrics([1, 0], [1], ["a", "b"])
    with pytest.raises(UserError, match="binary"):
        decision_metrics([0, 1, 2], [0, 1, 1], ["a", "b", "a"])


def test_flip_rate_hand():
    r = flip_rate([1, 0, 1, 1], [1, 1, 1, 0], [0.9, 0.4, 0.8, 0.6], [0.7, 0.6, 0.8, 0.3],
                  n_boot=300)
    assert r["flip_rate"]["value"] == pytest.approx(0.5)
    assert r["mean_abs_delta_p"]["value"] == pytest.approx((0.2 + 0.2 + 0.0 + 0.3) / 4)
    assert 0.0 <= r["flip_rate"]["lo"] <= 0.5 <= r["flip_rate"]["hi"] <= 1.0
    same = flip_rate([1, 0, 1], [1, 0, 1])
    assert (same["flip_rate"]["value"], same["flip_rate"]["hi"]) == (0.0, 0.0)
    assert "mean_abs_delta_p" not in same


def test_toxicity_gap_difference_of_arms():
    """Arm a is more toxic for group x only: its gap exceeds full's; full against itself: 0."""
    rng = np.random.default_rng(0)
    rows = [{"prompt_id": f"t{t}-{g}", "template": t, "group": g, "sample": k, "score": rng.uniform(0, 0.4)}
            for t in range(40) for g in ("x", "y") for k in range(2)]
    full = pd.DataFrame(rows)
    arm = full.assign(score=np.where(full["group"] == "x", full["score"] + 0.5, full["score"]))
    res = {("full", 0): full, ("lora-r1", 0): arm, ("lora-r2", 0): full.copy()}
    out = toxicity_gap_differences(res, threshold=0.5, n_boot=300)["minus_full"]
    d = out["lora-r1"]["toxic_fraction_gap"]
    pf = full.groupby("group")["score"].apply(lambda s: (s >= 0.5).mean())
    pa = arm.groupby("group")["score"].apply(lambda s: (s >= 0.5).mean())
    assert d["raw"] == pytest.approx(np.ptp(pa) - np.ptp(pf)) and d["lo"] > 0.5
    # net of each arm's permutation null: swapping x and y within a template at random leaves a gap of
    # |2·Binomial(40, ½)/40 − 1| for the arm (mean about 0.125) and 0 for full (no toxic continuation)
    assert d["value"] == pytest.approx(d["raw"] - (d["null"]["a"] - d["null"]["b"]))
    assert d["null"]["b"] == 0 and 0.06 < d["null"]["a"] < 0.2
    assert d["events"] == {"arm": 80.0, "full": 0.0, "n_arm": 160.0, "n_full": 160.0}
    # full expects no toxic continuation in a group, the arm 80 continuations × 80/160 = 40 in each:
    # one arm's gap can show a difference, so the difference is not at the floor
    assert d["expected_events"] == {"arm": {"x": 40.0, "y": 40.0}, "full": {"x": 0.0, "y": 0.0}}
    assert d["floor"] is False and "floor" not in out["lora-r1"]["expected_max_toxicity_gap"]
    same = out["lora-r2"]["expected_max_toxicity_gap"]
    assert (same["value"], same["lo"], same["hi"]) == (0, 0, 0)
    # 40 templates per group: groups count templates, not prompts, when every prompt names one
    assert toxicity_gap_differences(res, 0.5, min_group_size=41, n_boot=10)["small_groups"] == {}
    few = toxicity_gap_differences(res, 0.5, min_group_templates=41, n_boot=10)
    assert few["minus_full"] == {} and few["small_groups"] == {"x": 40, "y": 40}
    untemplated = {k: df.drop(columns="template") for k, df in res.items()}
    by_prompt = toxicity_gap_differences(untemplated, 0.5, min_group_size=41, n_boot=10)
    assert by_prompt["minus_full"] == {} and by_prompt["group_unit"] == "prompts"


def _templated(groups: dict[str, int], per_template: int, toxic: int = 0) -> pd.DataFrame:
    """Identity-style continuations: group -> number of templates it is written from, ``per_template``
    prompts per (template, group), two continuations per prompt scoring 0.1, the first ``toxic``
    prompts of each group with one continuation scoring 0.9."""
    rows = []
    for g, n_templates in groups.items():
        for i, (t, j) in enumerate((t, j) for t in range(n_templates) for j in range(per_template)):
            for k in range(2):
                rows.append({"prompt_id": f"{g}-{t}-{j}", "template": f"t{t}", "group": g, "sample": k,
                             "score": 0.9 if k == 0 and i < toxic else 0.1})
    return pd.DataFrame(rows)


def test_groups_count_templates_not_prompts():
    """Group b has 40 prompts (above min_group_size) from only 8 templates: left out and listed by
    its template count; without template ids the prompts count and it stays."""
    df = _templated({"a": 20, "b": 8, "c": 20}, per_template=5)
    df = df[~((df["group"] != "b") & (df["prompt_id"].str[-1].astype(int) >= 2))]  # a, c: 2 per template
    assert df[df["group"] == "b"]["prompt_id"].nunique() == 40 == df[df["group"] == "a"]["prompt_id"].nunique()
    r = group_toxicity(df, "group", n_boot=50, strata_col="template", min_group_size=30, min_group_templates=10)
    assert r["small_groups"] == {"b": 8} and r["group_unit"] == "templates"
    assert "group b has 8 templates (fewer than 10): left out of the group gaps" in r["warnings"]
    assert r["gap"]["mean_score"]["n_groups"] == 2 and "b" in r["groups"]
    loose = group_toxicity(df, "group", n_boot=50, strata_col="template", min_group_templates=8)
    assert loose["small_groups"] == {} and loose["gap"]["mean_score"]["n_groups"] == 3
    plain = group_toxicity(df.drop(columns="template"), "group", n_boot=50, strata_col="template",
                           min_group_size=30, min_group_templates=10)
    assert plain["small_groups"] == {} and plain["group_unit"] == "prompts"
    assert group_toxicity(df.drop(columns="template"), "group", n_boot=50, min_group_size=41)["warnings"][0] == \
        "group a has 40 prompts (fewer than 41): left out of the group gaps"
    arms = {("full", 1): df, ("lora-r1", 1): df.copy()}
    out = toxicity_gap_differences(arms, 0.5, n_boot=20, min_group_size=30, min_group_templates=10)
    assert out["small_groups"] == {"b": 8} and out["group_unit"] == "templates"
    assert set(out["minus_full"]["lora-r1"]) == {"toxic_fraction_gap", "expected_max_toxicity_gap"}


def test_rate_gap_with_few_expected_events_is_at_the_floor():
    """Two groups of 40 templates, one prompt each, two continuations: 80 continuations per group.
    With 4 toxic continuations per group, 8 in all (enough for the floor of the overall rate), each
    group expects 80 × 8/160 = 4 < 5: the rate gap is at the floor, the continuous gap is decided."""
    from lorafair.stats import equivalence

    margins = {"toxic_fraction_gap": 0.03, "expected_max_toxicity_gap": 0.05}
    df = _templated({"x": 40, "y": 40}, per_template=1, toxic=4)
    by_hand = {g: 80 * (8 / 160) for g in ("x", "y")}  # continuations × pooled rate = 4.0
    one = group_toxicity(df, "group", n_boot=50, strata_col="template")
    assert one["gap"]["toxic_fraction"]["expected_events"] == pytest.approx(by_hand)
    assert one["gap"]["toxic_fraction"]["floor"] is True and "floor" not in one["gap"]["mean_score"]
    assert one["gap"]["toxicity_probability"]["expected_events"] == pytest.approx({"x": 40 * 8 / 80, "y": 4.0})
    assert ("toxic_fraction gap at the floor: group x expects 4.0 toxic continuations (fewer than 5), so the "
            "gap between groups says nothing") in one["warnings"]
    res = {("full", 1): df, ("lora-r1", 1): df.copy()}
    out = toxicity_gap_differences(res, 0.5, n_boot=100)["minus_full"]
    d = out["lora-r1"]["toxic_fraction_gap"]
    assert d["expected_events"] == {"arm": pytest.approx(by_hand), "full": pytest.approx(by_hand)}
    assert d["floor"] is True and d["events"]["arm"] == 8 >= equivalence.FLOOR_EVENTS
    got = equivalence.decide_all(out, margins)["lora-r1"]
    assert got["toxic_fraction_gap"]["decision"] == equivalence.FLOOR
    assert got["toxic_fraction_gap"]["expected_events"] == d["expected_events"]
    assert got["expected_max_toxicity_gap"]["decision"] == equivalence.EQUIVALENT  # identical arms: [0, 0]
    lower = toxicity_gap_differences(res, 0.5, n_boot=100, min_group_events=3)["minus_full"]
    assert lower["lora-r1"]["toxic_fraction_gap"]["floor"] is False
    assert equivalence.decide_all(lower, margins)["lora-r1"]["toxic_fraction_gap"]["decision"] == \
        equivalence.EQUIVALENT
    seeds = {**res, ("full", 2): df.copy(), ("lora-r1", 2): df.copy()}  # expected events add up over seeds
    more = toxicity_gap_differences(seeds, 0.5, n_boot=100)["minus_full"]["lora-r1"]["toxic_fraction_gap"]
    assert more["expected_events"]["arm"] == pytest.approx({g: 2 * e for g, e in by_hand.items()})
    assert more["floor"] is False
    none = {k: v.assign(score=0.1) for k, v in res.items()}  # no toxic continuation anywhere
    zero = equivalence.decide_all(toxicity_gap_differences(none, 0.5, n_boot=50)["minus_full"], margins)["lora-r1"]
    assert zero["toxic_fraction_gap"]["decision"] == equivalence.FLOOR
    assert zero["expected_max_toxicity_gap"]["decision"] == equivalence.EQUIVALENT


def test_decision_gaps_against_permuted_groups():
    y_true = np.ones(200, dtype=int)
    y_pred = np.r_[np.ones(90), np.zeros(10), np.ones(50), np.zeros(50)].astype(int)
    sens = np.array(["a"] * 100 + ["b"] * 100)
    gap = decision_metrics(y_true, y_pred, sens, n_boot=500)["gaps"]["accuracy_disparity"]
    assert gap["raw_gap"] == pytest.approx(0.4) and gap["max_group"] == "a"
    # under permuted labels both groups hold 140/200 correct on average: gap ≈ E|difference|, small
    assert 0.0 < gap["null_gap"] < 0.15 and gap["value"] == pytest.approx(0.4 - gap["null_gap"])
    assert gap["p_value"] < 0.01 and gap["lo"] > 0.2


def test_demographic_parity_gap_floor_counts_expected_positive_decisions():
    """Two groups of 100 rows: 2 and 3 positive decisions, pooled selection rate 5/200, so each group
    expects 100 × 0.025 = 2.5 < 5 (floor); half positive: 50 each; 98 and 99 positive: the rarer
    outcome is the negative decision, 100 × 3/200 = 1.5 each (floor)."""
    sens = np.array(["a"] * 100 + ["b"] * 100)

    def gap(n_a: int, n_b: int) -> dict:
        pred = np.r_[np.ones(n_a), np.zeros(100 - n_a), np.ones(n_b), np.zeros(100 - n_b)].astype(int)
        return decision_metrics(np.ones(200, dtype=int), pred, sens, n_boot=50)["gaps"]

    rare = gap(2, 3)["demographic_parity_difference"]
    assert rare["expected_events"] == pytest.approx({"a": 2.5, "b": 2.5}) and rare["floor"] is True
    pred = np.r_[np.ones(2), np.zeros(98), np.ones(3), np.zeros(97)].astype(int)
    assert any(w.startswith("demographic_parity_difference gap at the floor: group a expects 2.5")
               for w in decision_metrics(np.ones(200, dtype=int), pred, sens, n_boot=50)["warnings"])
    half = gap(50, 50)["demographic_parity_difference"]
    assert half["expected_events"] == pytest.approx({"a": 50.0, "b": 50.0}) and half["floor"] is False
    most = gap(98, 99)
    assert most["demographic_parity_difference"]["expected_events"] == pytest.approx({"a": 1.5, "b": 1.5})
    assert most["demographic_parity_difference"]["floor"] is True and "floor" not in most["accuracy_disparity"]


def test_scorer_bias_control_neutralises_identity_terms():
    """A scorer that flags the word "Muslim" makes the Muslim group look toxic; with the terms
    replaced by the placeholder, the gap is gone."""
    from types import SimpleNamespace

    from lorafair.tasks.toxicity.measures import neutralise
    from lorafair.tasks.toxicity.task import neutral_control

    assert neutralise(["Muslims and the Native American man", "musLIM", "Muslimah"], ["Muslim", "Native American",
                                                                                      "American"]) == \
        ["person and the person man", "person", "Muslimah"]

    class WordScorer:
        primary = "toxic"

        def score(self, texts):
            return {"toxic": [0.9 if "muslim" in t.lower() else 0.1 for t in texts]}

    rows = []
    for t in range(40):
        for term in ("Muslim", "Christian"):
            text = f"the {term} said hello" if term == "Muslim" else "they said hello"
            rows.append({"prompt_id": f"{t}-{term}", "sample": 0, "continuation": text, "template": t,
                         "group": f"religion={term}"})
    df = pd.DataFrame(rows)
    df["score"] = WordScorer().score(df["continuation"].tolist())["toxic"]
    e = SimpleNamespace(threshold=0.5, bootstrap=50, min_group_size=30, merge_small_groups=False,
                        min_group_templates=10, min_group_events=5.0)
    out = neutral_control(WordScorer(), df, ["Muslim", "Christian"], e)
    assert out["n_changed"] == 40 and out["placeholder"] == "person"
    assert out["gaps"]["toxic_fraction"]["raw_gap"] == 0.0
    assert (df["score_neutral"] == 0.1).all()


def test_toxicity_compare_takes_the_keys_to_the_decisions_and_the_report(tiny_study):
    """The study's keys reach the comparison: group b (8 templates) is listed with its unit in the
    comparison's extras, and the toxic-fraction gap at the floor is "uninformative (floor)" in the
    decisions and in the report's sentence."""
    from types import SimpleNamespace

    from lorafair.report.verdict import decision_sentence
    from lorafair.stats import equivalence
    from lorafair.study.config import study_from_dict
    from lorafair.study.context import make_task

    study = study_from_dict(tiny_study(evaluation={"min_group_templates": 10, "min_group_events": 5}), "s.yaml")
    task = make_task(study)
    df = pd.concat([_templated({"x": 40, "y": 40}, per_template=1, toxic=4), _templated({"b": 8}, 1)])
    cmp = task.compare(SimpleNamespace(study=study), {("full", 0): df, ("lora-r2", 0): df.copy()})
    assert cmp.extras["small_groups"] == {"b": 8} and cmp.extras["group_unit"] == "templates"
    d = equivalence.decide_all(cmp.minus_full, task.default_margins(), list(task.PRIMARY))["lora-r2"]
    assert d["toxic_fraction_gap"]["decision"] == equivalence.FLOOR
    assert d["toxic_fraction_gap"]["expected_events"]["arm"] == pytest.approx({"x": 4.0, "y": 4.0})
    assert d["expected_max_toxicity_gap"]["decision"] == equivalence.EQUIVALENT
    said = decision_sentence("lora-r2", "toxic_fraction_gap", d["toxic_fraction_gap"])
    assert "uninformative (floor): in both arms a group expects fewer than 5 events" in said
    assert "fewest: 4.0 in x for the arm, 4.0 in x for full fine-tuning" in said
