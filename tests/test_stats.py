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
    (rec(0.019, 0.0, 0.0), False, "equivalent", None),
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
