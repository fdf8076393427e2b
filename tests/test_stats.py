"""Tests for lorafair.stats.intervals: coverage on simulated crossed and nested data, decisions, group gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from lorafair.stats import equivalence

from lorafair.stats import intervals as stats
from lorafair.errors import UserError

N_SETS = 400  # simulated data sets per case

# Share of the grand mean's variance (seed, unit, seed × unit) in each case, S seeds × U units.
CASES = {
    "unit-dominated": ((0.1, 0.8, 0.1), 3, 100, False),
    "seed-dominated": ((0.8, 0.1, 0.1), 3, 100, False),
    "interaction-dominated": ((0.1, 0.1, 0.8), 3, 100, False),
    "crossed": ((1 / 3, 1 / 3, 1 / 3), 3, 200, False),
    "nested": ((0.5, 0.4, 0.1), 3, 100, True),
}


def simulate(rng: np.random.Generator, shares: tuple, S: int, U: int, nested: bool, n: int) -> np.ndarray:
    """[n, S, U] data sets with mean 0: seed effect + unit effect (shared across seeds, or drawn per
    seed when ``nested``) + interaction, scaled so the grand mean's variance splits as ``shares``."""
    sa, sb, sc = (np.sqrt(p * f) for p, f in zip(shares, (S, U, S * U)))
    a = rng.normal(0, sa, (n, S, 1))
    b = rng.normal(0, sb, (n, S if nested else 1, U))
    return a + b + rng.normal(0, sc, (n, S, U))


@pytest.mark.parametrize("case", list(CASES))
def test_crossed_interval_covers_at_nominal_rate(case):
    shares, S, U, nested = CASES[case]
    data = simulate(np.random.default_rng(7), shares, S, U, nested, N_SETS)
    records = [stats.crossed_interval(x) for x in data]
    hits = [r["lo"] <= 0 <= r["hi"] for r in records]
    assert 0.92 <= np.mean(hits) <= 0.98, f"{case}: coverage {np.mean(hits):.3f}"


def test_paired_difference_covers_at_nominal_rate():
    """Two arms share unit effects; their difference keeps its own seed and unit parts."""
    rng = np.random.default_rng(11)
    shared = simulate(rng, (0.0, 1.0, 0.0), 3, 100, False, N_SETS) * 3
    a = shared + simulate(rng, (1 / 3, 1 / 3, 1 / 3), 3, 100, False, N_SETS)
    b = shared + simulate(rng, (1 / 3, 1 / 3, 1 / 3), 3, 100, False, N_SETS) + 0.0
    hits = []
    for xa, xb in zip(a, b):
        r = stats.crossed_difference(xa, xb)
        hits.append(r["lo"] <= 0 <= r["hi"])
    assert 0.92 <= np.mean(hits) <= 0.98


def test_ratio_statistic_covers_at_nominal_rate():
    """A toxic fraction (ratio of sums of binary outcomes) with crossed seed and prompt effects."""
    rng = np.random.default_rng(5)
    S, U, k = 3, 150, 4
    sa, sb, sc = 0.3, 1.0, 0.5  # seed, prompt and interaction effects on the logit scale
    # the population value E[sigmoid(−1.5 + a + b + c)], a + b + c ~ N(0, sa² + sb² + sc²)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    truth = float(weights @ (1 / (1 + np.exp(1.5 - np.sqrt(sa**2 + sb**2 + sc**2) * nodes)))
                  / weights.sum())
    hits = []
    for _ in range(N_SETS):
        eta = -1.5 + rng.normal(0, sa, (S, 1)) + rng.normal(0, sb, (1, U)) + rng.normal(0, sc, (S, U))
        tox = rng.binomial(k, 1 / (1 + np.exp(-eta)))
        x = np.stack([tox, np.full((S, U), k)], axis=-1).astype(float)
        r = stats.crossed_interval(x, lambda m: m[..., 0] / m[..., 1])
        hits.append(r["lo"] <= truth <= r["hi"])
    assert 0.92 <= np.mean(hits) <= 0.98, np.mean(hits)


def test_one_seed_is_the_t_interval_over_units():
    x = np.random.default_rng(2).normal(1.0, 2.0, (1, 80))
    r = stats.crossed_interval(x)
    lo, hi = scipy.stats.t.interval(0.95, 79, loc=x.mean(), scale=scipy.stats.sem(x[0]))
    assert (r["lo"], r["hi"]) == pytest.approx((lo, hi))
    assert r["components"]["seed"] is None and r["n_seeds"] == 1


def test_seed_dominated_interval_is_the_t_interval_over_seed_means():
    """No unit effect at all: the interval is the t interval of the S seed means (df S − 1)."""
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (4, 1)) + rng.normal(0, 0.01, (4, 50))
    x = x - x.mean(axis=0, keepdims=True) + x.mean()  # remove any unit pattern exactly
    r = stats.crossed_interval(x)
    means = x.mean(axis=1)
    lo, hi = scipy.stats.t.interval(0.95, 3, loc=means.mean(), scale=scipy.stats.sem(means))
    assert (r["lo"], r["hi"]) == pytest.approx((lo, hi))


def test_linearised_ratio_matches_hand_delta_method():
    rng = np.random.default_rng(3)
    num, den = rng.poisson(2, (1, 60)).astype(float), rng.integers(3, 6, (1, 60)).astype(float)
    r = stats.crossed_interval(np.stack([num, den], -1), lambda m: m[..., 0] / m[..., 1])
    R = num.sum() / den.sum()
    z = (num - R * den) / den.mean()  # the ratio estimator's influence values
    assert r["value"] == pytest.approx(R)
    assert r["se"] == pytest.approx(z.std(ddof=1) / np.sqrt(60), rel=1e-5)


def test_identical_arms_give_zero_difference():
    x = np.random.default_rng(1).normal(size=(3, 40, 1))
    r = stats.crossed_difference(x, x.copy())
    assert (r["value"], r["lo"], r["hi"], r["lo90"], r["hi90"]) == (0, 0, 0, 0, 0)
    with pytest.raises(UserError):
        stats.crossed_difference(x, x[:, :-1])


def test_cell_table_and_pair_cells():
    df = pd.DataFrame({"seed": [0, 0, 1, 1, 1], "unit": ["a", "b", "a", "b", "c"], "v": [1., 2, 3, 4, 5]})
    x, seeds, units = stats.cell_table(df, ["v"], "unit")
    assert seeds == [0, 1] and units == ["a", "b"]  # c is missing under seed 0
    np.testing.assert_array_equal(x[..., 0], [[1, 2], [3, 4]])
    xa, xb = stats.pair_cells((x[:1] * 0, [7], units), (x, seeds, units))  # base: one untrained seed
    assert xa.shape == xb.shape == (2, 2, 1)
    xa, xb = stats.pair_cells((x, [0, 1], ["a", "b"]), (x[1:, ::-1], [1], ["b", "a"]))
    np.testing.assert_array_equal(xa, x[1:])
    np.testing.assert_array_equal(xb, x[1:])  # units put back in a's order
    # the untrained base (seed 0) against full's seeds 0, 1, 2: every seed of full, base repeated
    full = np.arange(6.0).reshape(3, 2, 1)
    xa, xb = stats.pair_cells((x[:1], [0], units), (full, [0, 1, 2], units), untrained=True)
    assert xa.shape == xb.shape == (3, 2, 1)
    np.testing.assert_array_equal(xb, full)
    np.testing.assert_array_equal(xa, np.repeat(x[:1], 3, axis=0))
    xf, xb2 = stats.pair_cells((full, [0, 1, 2], units), (x[:1], [0], units), untrained=True)
    np.testing.assert_array_equal(xf, full)
    assert xb2.shape == (3, 2, 1)
    with pytest.raises(UserError):
        stats.pair_cells((x, [0, 1], units), (x, [2, 3], units))
    with pytest.raises(UserError):
        stats.pair_cells((x, seeds, units), (x, seeds, ["y", "z"]))


# ----------------------------------------------------------------------------- bootstrap


def test_crossed_bootstrap_draws_the_same_units_for_every_seed():
    """Seed 1 is seed 0 plus 1: in every replicate the seed means then differ by exactly 1."""
    x0 = np.random.default_rng(0).normal(size=(1, 30))
    x = np.concatenate([x0, x0 + 1])[:, :, None]
    boots = stats.crossed_bootstrap([x[:1], x[1:]], lambda s: (s[1] - s[0])[:, 0] / 30, n_boot=200)
    np.testing.assert_allclose(boots, 1.0)
    v, w = stats.crossed_weights(np.random.default_rng(0), 3, 30, 50)
    assert (v.sum(1) == 3).all() and (w.sum(1) == 30).all()


# ----------------------------------------------------------------------------- decisions


def rec(value, half95, half90=None):
    half90 = half95 * 0.84 if half90 is None else half90
    return {"value": value, "lo": value - half95, "hi": value + half95,
            "lo90": value - half90, "hi90": value + half90}


@pytest.mark.parametrize("diff, hib, want, beyond", [
    (rec(0.005, 0.012), False, "equivalent", None),
    (rec(0.015, 0.012, 0.009), False, "worse", False),  # 90% interval reaches 0.024 > δ = 0.02
    (rec(0.05, 0.012), False, "worse", True),
    (rec(-0.05, 0.012), False, "better", True),
    (rec(-0.05, 0.012), None, "lower", True),
    (rec(0.0, 0.05), False, "inconclusive", None),
    (rec(0.019, 0.0, 0.0), False, "worse, within δ", False),  # decided non-zero and inside ±δ: both said
    (rec(-0.01, 0.008, 0.006), None, "lower, within δ", False),
    ({**rec(0.0, 0.0, 0.0), "events": {"arm": 0, "full": 0}}, False, "uninformative (floor)", None),
    ({**rec(0.0, 0.0, 0.0), "events": {"arm": 12, "full": 0}}, False, "equivalent", None),
    ({**rec(0.005, 0.012), "floor": True, "events": {"arm": 40, "full": 40}}, False, "uninformative (floor)", None),
    ({**rec(0.005, 0.012), "floor": False}, False, "equivalent", None),  # a gap with enough expected events
    ({"value": 0.0, "lo": float("nan"), "hi": 0.1}, False, "undefined", None),
])
def test_decide(diff, hib, want, beyond):
    d = equivalence.decide(diff, 0.02, hib)
    assert d["decision"] == want and d["beyond_margin"] == beyond


def test_decide_needs_a_positive_margin():
    with pytest.raises(UserError):
        equivalence.decide(rec(0, 0.1), 0.0)


def test_more_data_reproduces_the_target_width():
    """The counts are the smallest at which the crossed interval (t quantiles, as lorafair.stats.intervals
    computes it) reaches the goal: 90% within ±δ, or, beyond δ, 95% clear of zero."""
    from lorafair.stats.intervals import half_width

    comp = {"seed": 0.00003, "unit": 0.004, "inter": 0.002}
    diff = {"value": 0.005, "components": comp, "n_seeds": 3, "n_units": 100}

    def width(S, U, alpha):
        v_seed, v_unit = (comp["seed"] + comp["inter"] / U) / S, comp["unit"] / U
        return float(half_width({"v_seed": v_seed, "df_seed": S - 1, "v_unit": v_unit, "df_unit": U - 1}, alpha))

    need = equivalence.more_data(diff, 0.02)
    assert need["goal"] == "equivalent"
    U2, S2 = need["units"], need["seeds"]
    assert width(3, U2, 0.10) < 0.015 <= width(3, U2 - 1, 0.10)
    assert width(S2, 100, 0.10) < 0.015 <= width(S2 - 1, 100, 0.10)
    beyond = equivalence.more_data({**diff, "value": 0.03}, 0.02)  # beyond the margin: show it non-zero
    assert beyond["goal"] == "non-zero"
    assert width(3, beyond["units"], 0.05) < 0.03 <= width(3, beyond["units"] - 1, 0.05)
    one = equivalence.more_data({"value": 0.005, "components": {"seed": None, "unit": 0.4, "inter": None},
                                 "n_seeds": 1, "n_units": 50}, 0.02)
    assert one["seeds"] is None and one["units"] > 50  # one seed: only the unit route is known
    hopeless = equivalence.more_data({**diff, "components": {**comp, "seed": 1.0}}, 0.02)
    assert hopeless["units"] is None  # the seed part alone is wider than the goal


def test_margin_for_and_rank_recommendation():
    margins = {"accuracy": 0.02, "accuracy_disparity": 0.03}
    assert equivalence.margin_for("accuracy_disparity_race", margins) == 0.03
    assert equivalence.margin_for("accuracy", margins) == 0.02 and equivalence.margin_for("flip", margins) is None
    eq, inc = {"decision": "equivalent"}, {"decision": "inconclusive"}
    dec = {"lora-r1": {"a": eq, "b": inc}, "lora-r4": {"a": eq, "b": eq}, "lora-r8": {"a": eq, "b": eq}}
    ranks = {"lora-r1": 1, "lora-r4": 4, "lora-r8": 8}
    assert equivalence.rank_recommendation(dec, ranks, ["a", "b"]) == 4
    assert equivalence.rank_recommendation(dec, ranks, ["a"]) == 1
    assert equivalence.rank_recommendation({"lora-r1": {"a": inc}}, {"lora-r1": 1}, ["a"]) is None


# ----------------------------------------------------------------------------- group gaps


def _identical_groups(rng, n_templates=44, n_groups=15, k=4):
    """Toxicity-like cells: every template has one prompt per group, groups identical."""
    p = rng.beta(1, 8, (n_templates, 1)) * np.ones((1, n_groups))
    tox = rng.binomial(k, p)
    x = np.stack([tox.ravel(), np.full(tox.size, k)], -1).astype(float)
    groups = np.tile(np.arange(n_groups), n_templates)
    strata = np.repeat(np.arange(n_templates), n_groups)
    return x, groups, strata


def test_bias_corrected_gap_covers_zero_for_identical_groups():
    rng = np.random.default_rng(9)
    hits, raw = [], []
    for i in range(N_SETS):
        x, g, st = _identical_groups(rng)
        r = stats.group_gap(x, g, lambda m: m[..., 0] / m[..., 1], st, n_perm=200, seed=i)
        hits.append(r["lo"] <= 0 <= r["hi"])
        raw.append(r["gap"])
    assert 0.92 <= np.mean(hits) <= 0.98, np.mean(hits)
    assert np.mean(raw) > 0.05  # the raw max − min gap is far from the true 0


def test_group_gap_detects_a_real_difference():
    rng = np.random.default_rng(1)
    x, g, st = _identical_groups(rng)
    x[g == 3, 0] = x[g == 3, 1]  # group 3: every continuation toxic
    r = stats.group_gap(x, g, lambda m: m[..., 0] / m[..., 1], st, n_perm=500)
    assert r["max_group"] == 3 and r["p_value"] < 0.01 and r["lo"] > 0.5


def test_gap_difference_of_identical_arms_is_zero_and_paired():
    rng = np.random.default_rng(2)
    x = rng.poisson(2.0, (2, 20, 3, 2)).astype(float) + [0, 5]  # [S, U, G, (num, den)]
    gap = stats.max_min(lambda m: m[..., 0] / m[..., 1])
    r = stats.gap_difference(x, x.copy(), gap, n_boot=300)
    assert (r["value"], r["lo"], r["hi"]) == (0, 0, 0)
    y = x.copy()
    y[:, :, 0, 0] += 2  # arm a: group 0 much higher
    r = stats.gap_difference(y, x, gap, n_boot=300)
    assert r["lo"] > 0


def test_decide_all_uses_margins_and_says_how_much_more_data():
    comp = {"seed": 1e-6, "unit": 0.01, "inter": 0.001}
    wide = {"value": 0.001, "lo": -0.03, "hi": 0.032, "lo90": -0.025, "hi90": 0.027,
            "higher_is_better": False, "components": comp, "n_seeds": 3, "n_units": 64}
    narrow = {**wide, "lo": -0.004, "hi": 0.006, "lo90": -0.003, "hi90": 0.005}
    out = equivalence.decide_all({"lora-r1": {"toxic_fraction": wide, "other": narrow},
                            "lora-r8": {"toxic_fraction": narrow}}, {"toxic_fraction": 0.02})
    r1 = out["lora-r1"]["toxic_fraction"]
    assert r1["decision"] == "inconclusive" and r1["more_data"]["units"] > 64
    assert out["lora-r1"]["other"]["decision"] == "no margin"
    assert out["lora-r8"]["toxic_fraction"]["decision"] == "equivalent"


def test_base_minus_full_uses_every_seed_of_full():
    """Full's seeds differ by a constant; base − full must average over all three, not take seed 0."""
    units = list(range(40))
    rng = np.random.default_rng(3)
    u = rng.normal(size=(1, 40, 1))
    full = np.concatenate([u + 0.0, u + 1.0, u + 2.0])  # seed means 0, 1, 2
    base = u + 5.0
    d = stats.crossed_difference(*stats.pair_cells((base, [0], units), (full, [0, 1, 2], units), untrained=True))
    assert d["value"] == pytest.approx(5.0 - 1.0) and d["n_seeds"] == 3


# ----------------------------------------------------------------------------- p-values, Holm, floors


def test_holm_matches_a_hand_computation():
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4). Sorted: 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 =
    0.02, 0.03, 0.06, 0.04 → running maximum 0.02, 0.03, 0.06, 0.06."""
    adj = equivalence.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert adj == pytest.approx({"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06})
    assert equivalence.holm({"x": 0.6, "y": 0.7}) == pytest.approx({"x": 1.0, "y": 1.0})  # capped at 1


def test_p_value_of_a_crossed_record_is_where_its_interval_touches_zero():
    rng = np.random.default_rng(4)
    x = rng.normal(0.2, 1.0, (3, 60, 1)) + rng.normal(0, 0.1, (3, 1, 1))
    d = stats.crossed_difference(x, np.zeros_like(x))
    p = equivalence.p_value(d)
    lo, hi = equivalence.interval_at(d, 1 - p)
    assert min(abs(lo), abs(hi)) == pytest.approx(0.0, abs=1e-6)
    assert (p < 0.05) == (d["lo"] > 0 or d["hi"] < 0)
    assert equivalence.interval_at(d, 0.95) == (d["lo"], d["hi"])
    one = stats.crossed_difference(x[:1], np.zeros_like(x[:1]))  # one seed: a plain t test over units
    t = scipy.stats.ttest_1samp(x[0, :, 0], 0.0)
    assert equivalence.p_value(one) == pytest.approx(t.pvalue, rel=1e-4)


def test_decide_all_holm_family_primary_fit_and_shape():
    """Two arms × one primary metric with unadjusted p of about 0.03 each: 95% intervals exclude 0,
    but Holm over the family (0.03·2 = 0.06) does not, so neither is "worse"; the secondary metric
    keeps its unadjusted decision; an unfitted arm gets no verdict; base stays out of the family."""
    def crossed(v, se):  # a one-seed crossed record with p(|t| on 99 df)
        return {"value": v, "lo": v - 1.984 * se, "hi": v + 1.984 * se, "lo90": v - 1.66 * se,
                "hi90": v + 1.66 * se, "components": {"seed": None, "unit": se ** 2 * 100, "inter": None},
                "n_seeds": 1, "n_units": 100, "higher_is_better": False}
    rec = crossed(0.0221, 0.01)
    p1 = equivalence.p_value(rec)
    assert 0.025 < p1 < 0.035 and p1 == pytest.approx(2 * scipy.stats.t.sf(2.21, 99), rel=1e-3)
    minus = {"lora-r1": {"tf": rec, "other": rec}, "lora-r8": {"tf": rec, "other": rec},
             "base": {"tf": crossed(0.3, 0.01)}, "lora-r2": {"tf": rec}}
    fit = {"lora-r2": {"fitted": False, "reasons": ["learning-rate search ended at the grid edge"]}}
    out = equivalence.decide_all(minus, {"tf": 0.1, "other": 0.1}, primary=["tf"], fit=fit)
    r1 = out["lora-r1"]["tf"]
    assert r1["p_holm"] == pytest.approx(2 * p1) and r1["decision"] == "equivalent" and r1["primary"]
    assert out["lora-r1"]["other"]["decision"] == "worse, within δ" and not out["lora-r1"]["other"]["primary"]
    assert out["base"]["tf"]["p_holm"] is None and out["base"]["tf"]["decision"] == "worse"
    r2 = out["lora-r2"]["tf"]
    assert r2["decision"] == "no verdict: did not fit (learning-rate search ended at the grid edge)"
    assert r2["fitted"] is False and r2["p_holm"] is None
    for key in ("arm", "metric", "value", "lo", "hi", "lo90", "hi90", "delta", "decision", "fitted", "primary",
                "p_holm"):
        assert key in r1
    assert equivalence.rank_recommendation(out, {"lora-r1": 1, "lora-r2": 2}, ["tf"]) == 1
    assert equivalence.rank_recommendation(out, {"lora-r2": 2}, ["tf"]) is None


def test_fit_gate_reasons():
    from lorafair.stats.fit import fit_gate

    done = [{"best_val_loss": 0.30, "best_step": 34, "steps": 34, "stopped_early": False}] * 3
    full = [{"best_val_loss": 0.10, "best_step": 20, "steps": 34}] * 3
    edge = {"interior": False, "chosen": 0.01, "extensions": [{}, {}]}
    g = fit_gate(edge, done, full, loss_base=1.1, competence="a constant policy", patience=2)
    assert not g["fitted"] and len(g["reasons"]) == 3 and g["loss_share"] == pytest.approx(0.2)
    assert "3 of 3 seeds" in g["under_trained"] and "never stopped" in g["under_trained"]
    ok = fit_gate({"interior": True}, done, full, loss_base=2.1 + 10)
    assert ok["fitted"] and ok["reasons"] == []



def test_fit_gate_names_the_seeds_that_failed_the_task_check_alone():
    """Seeds failing the task's check are a note beside the verdict (the arm stays fitted), with full
    fine-tuning's count for comparison."""
    from lorafair.stats.fit import fit_gate

    done = [{"best_val_loss": 0.10, "best_step": 20, "steps": 34, "stopped_early": True}] * 8
    g = fit_gate({"interior": True}, done, done, loss_base=9.0, seed_failures={7: "a constant policy",
                 0: "a constant policy", 2: "a constant policy"}, full_failures=(1, 8))
    assert g["fitted"] and g["reasons"] == []
    assert g["seeds_failing"] == "a constant policy in seeds 0, 2, 7 (3 of 8 seeds; full fine-tuning: 1 of 8)"
    one = fit_gate({"interior": True}, done[:2], done, loss_base=9.0, seed_failures={1: "x"})
    assert one["seeds_failing"] == "x in seed 1 (1 of 2 seeds)"
    assert fit_gate({"interior": True}, done, done, loss_base=9.0, seed_failures={})["seeds_failing"] is None

# ----------------------------------------------------------------------------- gap differences without noise bias


def _noisy_gap_pair(rng, sd_a, sd_f, effect=0.0, S=3, U=18, G=6):
    """Toxicity-like group cells of two arms, no group effect in full; arm noise sd_a, full's sd_f."""
    template = rng.normal(0.3, 0.05, (1, U, 1))

    def arm(sd, e):
        v = template + rng.normal(0, sd, (S, U, G))
        v[..., 0] += e
        return np.stack([v, np.ones_like(v)], -1)

    return arm(sd_a, effect), arm(sd_f, 0.0)


def test_gap_difference_with_unequal_noise_and_no_disparity_is_rarely_worse():
    """No disparity in either arm, the arm 3× as noisy as full: the raw max − min difference is
    decided "worse" most of the time, the debiased one in at most 6% of runs; a real disparity in the
    arm is still found."""
    rng = np.random.default_rng(11)
    gap = stats.max_min(lambda m: m[..., 0] / m[..., 1])
    worse_raw, worse, values = [], [], []
    for i in range(200):
        xa, xf = _noisy_gap_pair(rng, 0.09, 0.03)
        r = stats.gap_difference(xa, xf, gap, n_boot=200, seed=i, n_perm=100)
        raw = stats.gap_difference(xa, xf, gap, n_boot=200, seed=i, debias=False)
        worse.append(equivalence.decide(r, 0.03, False)["decision"].startswith("worse"))
        worse_raw.append(equivalence.decide(raw, 0.03, False)["decision"].startswith("worse"))
        values.append(r["value"])
    assert np.mean(worse) <= 0.06, np.mean(worse)
    assert np.mean(worse_raw) > 0.5
    assert abs(np.mean(values)) < 0.005  # unbiased: the raw difference averages about +0.02 here
    found = [stats.gap_difference(*_noisy_gap_pair(rng, 0.09, 0.03, effect=0.12), gap, n_boot=200, seed=i,
                                  n_perm=100)["lo"] > 0 for i in range(30)]
    assert np.mean(found) > 0.8


def test_fit_gate_needs_a_fine_tuning_effect_to_judge_the_loss():
    from lorafair.stats.fit import fit_gate

    done = [{"best_val_loss": 9.9, "best_step": 2, "steps": 4}]
    full = [{"best_val_loss": 9.5, "best_step": 4, "steps": 4}]
    assert fit_gate(None, done, full, loss_base=10.0)["fitted"]  # full moved the loss 5%: nothing to judge
    assert not fit_gate(None, done, full, loss_base=12.0)["fitted"]  # 21%: the arm kept 16% of the distance


def test_p_value_agrees_with_the_interval_when_the_seed_component_is_truncated():
    """Seed means closer together than the interaction implies (MS_S < MS_E): the p-value must still
    be below 0.05 exactly when the 95% interval excludes 0."""
    rng = np.random.default_rng(5)
    for i in range(30):
        z = rng.normal(0, 1, (3, 50, 1))
        z -= z.mean(axis=1, keepdims=True) - z.mean()  # equal seed means: MS_S = 0
        d = stats.crossed_difference(z + rng.normal(0.3, 0.2), np.zeros_like(z))
        assert d["components"]["seed"] == 0.0
        assert (equivalence.p_value(d) < 0.05) == (d["lo"] > 0 or d["hi"] < 0), d


def test_p_value_of_a_difference_far_beyond_its_interval_is_tiny_not_an_error():
    d = stats.crossed_difference(np.full((2, 5, 1), 1.0) + np.arange(5)[None, :, None] * 1e-7,
                                 np.zeros((2, 5, 1)))
    assert equivalence.p_value(d) < 1e-10
