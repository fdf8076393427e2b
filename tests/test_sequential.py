"""Tests for lorafair.stats.sequential: boundaries against published values and scipy, the single
look equal to the fixed-sample decision, and error rates over looks on simulated crossed designs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

import sequential_sim as sim
from lorafair.stats import equivalence, intervals, sequential


def test_boundaries_match_published_lan_demets_values():
    """O'Brien–Fleming-type spending, two-sided α = 0.05, equally spaced looks (Jennison & Turnbull
    2000, table 7.6; the values ``ldbounds``/``gsDesign`` give)."""
    four = sequential.boundaries((0.25, 0.5, 0.75, 1.0), 0.05, 2)
    assert np.allclose(four, (4.3326, 2.9631, 2.3590, 2.0141), atol=2e-4)
    five = sequential.boundaries((0.2, 0.4, 0.6, 0.8, 1.0), 0.05, 2)
    assert np.allclose(five, (4.8769, 3.3569, 2.6803, 2.2898, 2.0310), atol=2e-4)
    assert sequential.boundaries((1.0,), 0.05, 2) == pytest.approx((scipy.stats.norm.isf(0.025),))
    assert sequential.boundaries((1.0,), 0.05, 1) == pytest.approx((scipy.stats.norm.isf(0.05),))


@pytest.mark.parametrize("sides", [1, 2])
def test_crossing_probabilities_match_scipy_multivariate_normal(sides):
    """Unequal looks: the probability of no crossing up to each look, from scipy's multivariate
    normal with corr(Z_i, Z_j) = sqrt(t_i / t_j), equals 1 − the error spent by then."""
    times = (0.3, 0.55, 0.8, 1.0)
    c = np.array(sequential.boundaries(times, 0.05, sides))
    t = np.array(times)
    cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    for k in range(1, len(times) + 1):
        lower = -c[:k] if sides == 2 else np.full(k, -np.inf)
        stay = scipy.stats.multivariate_normal.cdf(c[:k], np.zeros(k), cov[:k, :k], lower_limit=lower,
                                                   abseps=1e-7, releps=1e-7, maxpts=200_000)
        spent = sequential._spent(times[k - 1], 0.05, sides)
        assert stay == pytest.approx(1 - spent, abs=2e-5), (k, stay, spent)
    got = sequential.crossing_probabilities(times, c, sides)
    assert sum(got) == pytest.approx(0.05, abs=1e-6)


def test_spending_function_is_obrien_fleming_type():
    assert sequential.spending(1.0, 0.05) == pytest.approx(0.05)
    assert sequential.spending(0.25, 0.05) == pytest.approx(2 * scipy.stats.norm.sf(1.959964 / 0.5), rel=1e-5)
    ts = np.linspace(0.05, 1, 20)
    assert np.all(np.diff([sequential.spending(t, 0.05) for t in ts]) > 0)


def _records(n: int, theta: float, S: int = 3, U: int = 40, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    x = sim.cells(rng, (0.5, 0.3, 0.2), U, theta, n, S)
    return [intervals.crossed_interval(xi[..., None]) for xi in x]


def test_a_single_look_is_the_fixed_sample_decision():
    """One look at the cap: the levels are 0.05 and 0.10, the intervals are the record's own and
    the decisions those of ``equivalence.decide``."""
    look = sequential.look_levels([3], 3)[0]
    assert look["level_test"] == pytest.approx(0.05) and look["level_equiv"] == pytest.approx(0.10)
    seen = set()
    for theta in (0.0, 0.6, 1.5, 3.0, -3.0):
        for r in _records(30, theta):
            got = sequential.decide_look(r, 1.5, look, higher_is_better=False)
            want = equivalence.decide(r, 1.5, False)["decision"]
            assert got["decision"] == ("open" if want == "inconclusive" else want)
            assert (got["lo"], got["hi"]) == pytest.approx((r["lo"], r["hi"]))
            assert (got["lo_equiv"], got["hi_equiv"]) == pytest.approx((r["lo90"], r["hi90"]))
            seen.add(got["decision"])
    assert {"equivalent", "worse", "better", "open"} <= seen <= {"equivalent", "worse", "better", "open",
                                                               "worse, within δ", "better, within δ"}


def test_later_looks_are_wider_than_fixed_sample_intervals_early_and_close_at_the_end():
    levels = sequential.look_levels([3, 6, 9, 12], 12)
    assert [lv["n_seeds"] for lv in levels] == [3, 6, 9, 12]
    assert all(a["level_test"] < b["level_test"] for a, b in zip(levels, levels[1:]))
    assert levels[0]["level_test"] < 1e-4 and 0.04 < levels[-1]["level_test"] < 0.05
    r = _records(1, 0.0)[0]
    early = sequential.decide_look(r, 1.5, levels[0])
    assert early["hi"] - early["lo"] > 3 * (r["hi"] - r["lo"])


def test_simulation_decides_as_decide_look():
    """The vectorised simulation makes the same decisions as the library function per study."""
    rng = np.random.default_rng(4)
    x = sim.cells(rng, (1 / 3, 1 / 3, 1 / 3), 30, 0.9, 60)
    fast, used = sim.fixed_schedule(x, 1.5)
    for i in range(len(x)):
        want, n = "open", 12
        for k, s in enumerate(sim.LOOKS):
            rec = intervals.crossed_interval(x[i, :s, :, None])
            got = sequential.decide_look(rec, 1.5, sequential.look_levels(sim.LOOKS[:k + 1], 12)[-1])["decision"]
            if got != "open":
                want, n = got, s
                break
        assert (fast[i], used[i]) == (want, n), i


@pytest.mark.parametrize("case", list(sim.CASES))
def test_error_rates_hold_over_four_looks(case):
    """Up to 4 looks (3, 6, 9, 12 seeds): "equivalent" at a true difference of ±δ and a decided
    difference ("worse", "better") at 0 in at most 5.5% of 2,000 simulated studies each; the naive
    procedure (fixed-sample intervals at every look) exceeds the sequential rate."""
    shares, U = sim.CASES[case]
    rng = np.random.default_rng(21)
    for theta in (sim.DELTA, -sim.DELTA):
        x = sim.cells(rng, shares, U, theta, 2000)
        seq, _ = sim.fixed_schedule(x, sim.DELTA)
        naive, _ = sim.fixed_schedule(x, sim.DELTA, naive=True)
        rate, naive_rate = np.mean(sim.claims_equivalent(seq)), np.mean(sim.claims_equivalent(naive))
        assert rate <= 0.055, (case, theta, rate)
        assert naive_rate > rate, (case, theta, naive_rate, rate)
    x = sim.cells(rng, shares, U, 0.0, 2000)
    seq, used = sim.fixed_schedule(x, sim.DELTA)
    naive, _ = sim.fixed_schedule(x, sim.DELTA, naive=True)
    for word in ("higher", "lower"):
        assert np.mean(sim.claims(seq, word)) <= 0.055, (case, word, np.mean(sim.claims(seq, word)))
    nonzero = lambda w: sim.claims(w, "higher") | sim.claims(w, "lower")  # noqa: E731
    assert np.mean(nonzero(naive)) > np.mean(nonzero(seq))
    assert used.min() >= 3 and used.max() <= 12


def test_a_clear_difference_stops_early():
    rng = np.random.default_rng(8)
    x = sim.cells(rng, (1 / 3, 1 / 3, 1 / 3), 100, 8.0, 400)
    seq, used = sim.fixed_schedule(x, sim.DELTA)
    assert np.mean(seq == "higher") > 0.99 and np.mean(used) < 6.5


@pytest.mark.slow
@pytest.mark.parametrize("case", ["crossed", "seed-dominated", "few units"])
def test_error_rates_hold_with_the_planner(case):
    """Look sizes chosen by the planner from the variance measured so far (at least 3 seeds more
    per look, so at most 4 looks up to 12 seeds): the same error bounds on 400 studies each."""
    shares, U = sim.CASES[case]
    rng = np.random.default_rng(5)
    got, used, looks = sim.planned(sim.cells(rng, shares, U, sim.DELTA, 400), sim.DELTA, step=3)
    assert np.mean(sim.claims_equivalent(got)) <= 0.055 and looks.max() <= 4
    got, used, looks = sim.planned(sim.cells(rng, shares, U, 0.0, 400), sim.DELTA, step=3)
    for word in ("higher", "lower"):
        assert np.mean(sim.claims(got, word)) <= 0.055, (word, np.mean(sim.claims(got, word)))


def test_planner_respects_step_and_cap_and_projects_from_the_components():
    comp = {"seed": 0.02, "unit": 0.01, "inter": 0.05}
    clear = {"value": 0.3, "components": comp, "n_seeds": 3, "n_units": 100}
    n, want = sequential.next_size([(clear, 0.1)], [3], 12, 1)
    assert want is not None and n == max(4, want) and n <= 12
    assert sequential.settles(clear, 0.1, want, sequential.look_levels([3, want], 12)[-1])
    if want > 4:
        assert not sequential.settles(clear, 0.1, want - 1, sequential.look_levels([3, want - 1], 12)[-1])
    hopeless = {"value": 0.099, "components": comp, "n_seeds": 3, "n_units": 100}
    assert sequential.next_size([(hopeless, 0.1)], [3], 12, 2) == (5, None)
    late = sequential.seeds_to_settle(clear, 0.1, [3, 11], 12)
    assert sequential.next_size([(clear, 0.1)], [3, 11], 12, 4) == (12, late)


def test_a_decided_difference_inside_the_margin_is_within_delta_and_a_floor_stays_open():
    """A difference whose test interval excludes 0 and whose equivalence interval lies inside ±δ is
    "worse, within δ" (as ``equivalence.decide`` words it); a rate with few events in both arms is
    at the floor, which a look does not settle."""
    look = sequential.look_levels([3], 3)[0]
    rec = {"value": 0.5, "parts": {"v_seed": 0.01, "df_seed": 2, "v_unit": 0.001, "df_unit": 99},
           "n_seeds": 3, "n_units": 100}
    rec |= {"lo": 0.5 - 0.47, "hi": 0.5 + 0.47}
    got = sequential.decide_look(rec, 1.5, look, higher_is_better=False)
    assert got["decision"] == "worse, within δ" == equivalence.decide({**rec, "lo90": got["lo_equiv"],
                                                                       "hi90": got["hi_equiv"]}, 1.5, False)["decision"]
    assert got["lo"] > 0 and -1.5 < got["lo_equiv"] and got["hi_equiv"] < 1.5
    assert sequential.decide_look({**rec, "value": -0.5}, 1.5, look, True)["decision"] == "worse, within δ"
    assert sequential.decide_look({**rec, "value": 0.5}, 1.5, look)["decision"] == "higher, within δ"
    floor = sequential.decide_look({**rec, "events": {"arm": 1, "full": 0}}, 1.5, look, False)
    assert floor["decision"] == equivalence.FLOOR and not sequential.is_decided(floor["decision"])
    assert all(sequential.is_decided(w) for w in ("equivalent", "worse", "better, within δ"))
    assert not sequential.is_decided("open")
