"""Tests for the lending environment, its rollout measures and the reference threshold policies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env
from scipy import optimize, stats

from lending_oracles import describe_swapped, gaps, rollout_pairs, timeseries
from lorafair.errors import UserError
from lorafair.tasks.lending.env import (
    LendingEnv,
    LendingParams,
    describe,
    env_seeds,
    initial_counts,
    rollout,
)
from lorafair.tasks.lending.policies import (
    EqualOpportunityOracle,
    Threshold,
    equal_opportunity_thresholds,
    expected_profit,
    max_profit_threshold,
    threshold_policy,
    tpr_of,
)

P = LendingParams()
P0 = LendingParams(burnin=0)  # the policy decides from the first step
C = P.n_bins


def _rule(batch):
    """A deterministic, group-dependent policy."""
    return [int(o["bin"] >= 3 or (o["group"] == 1 and o["bin"] == 2)) for o in batch]


def test_gymnasium_api_check():
    check_env(LendingEnv(), skip_render_check=True)


def test_defaults_are_the_published_ones():
    assert P.success_probs == (0.1, 0.2, 0.45, 0.6, 0.65, 0.7, 0.7)
    np.testing.assert_array_equal(initial_counts(P), [[0, 10, 10, 20, 30, 30, 0],
                                                      [10, 10, 20, 30, 30, 0, 0]])


def test_initial_counts_rounding_keeps_population():
    params = LendingParams(success_probs=(0.2, 0.5, 0.8),
                           init_dists=((1 / 3,) * 3, (0.5, 0.25, 0.25)), population_size=7)
    counts = initial_counts(params)
    assert counts.sum(1).tolist() == [7, 7]
    assert np.abs(counts / 7 - np.asarray(params.init_dists)).max() <= 1 / 7


def test_reset_is_deterministic_under_seed():
    def trace(seed):
        env = LendingEnv()
        obs, info = env.reset(seed=seed)
        out = [(obs["group"], obs["bin"], info["would_repay"])]
        for t in range(300):
            obs, r, _, _, info = env.step(t % 2)
            out.append((obs["group"], obs["bin"], info["would_repay"], r, info["profit"]))
        return out, env.counts.copy()

    a, b, c = trace(5), trace(5), trace(6)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0] != c[0]


def test_transitions_rewards_and_conservation():
    params = LendingParams(interest_rate=0.4, loan_amount=1.5, burnin=0)
    env = LendingEnv(params)
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    seen = {"up": 0, "down": 0, "deny": 0, "clip_top": 0}
    profit = 0.0
    for _ in range(3000):
        before = env.counts.copy()
        app = env.applicant
        a = int(rng.random() < 0.7)
        _, r, term, trunc, info = env.step(a)
        d = info["decided"]
        assert (d["group"], d["bin"], d["would_repay"]) == (app.group, app.bin, app.would_repay)
        expected = before.copy()
        if a == 0:
            assert r == 0.0 and d["repaid"] is False
            seen["deny"] += 1
        elif app.would_repay:
            assert r == pytest.approx(1.5 * 0.4) and d["repaid"] is True  # loan_amount x interest_rate
            new = min(app.bin + 1, C - 1)
            expected[app.group, app.bin] -= 1
            expected[app.group, new] += 1
            seen["up"] += 1
            seen["clip_top"] += app.bin == C - 1
        else:
            assert r == pytest.approx(-1.5) and d["repaid"] is False
            expected[app.group, app.bin] -= 1
            expected[app.group, max(app.bin - 1, 0)] += 1
            seen["down"] += 1
        np.testing.assert_array_equal(env.counts, expected)
        assert env.counts.sum(1).tolist() == [100, 100]
        assert (env.counts >= 0).all()
        profit += r
        assert info["profit"] == pytest.approx(profit)
        np.testing.assert_allclose(info["dists"], env.counts / 100, atol=1e-7)
        assert not term and not trunc and info["cash"] is None
    assert min(seen.values()) > 0


def test_applicants_follow_group_and_bin_distributions():
    """Always deny: populations stay at the initial distributions, so draws must follow them."""
    params = LendingParams(group_prob=0.3, burnin=0)
    env = LendingEnv(params)
    obs, info = env.reset(seed=11)
    rows = []
    for _ in range(20000):
        rows.append((obs["group"], obs["bin"], info["would_repay"]))
        obs, _, _, _, info = env.step(0)
    g, b, y = (np.array(c) for c in zip(*rows))
    assert stats.binomtest(int(g.sum()), g.size, 0.3).pvalue > 1e-3
    for grp in (0, 1):
        obs_counts = np.bincount(b[g == grp], minlength=C)
        exp = np.asarray(params.init_dists[grp]) * (g == grp).sum()
        keep = exp > 0
        assert obs_counts[~keep].sum() == 0
        assert stats.chisquare(obs_counts[keep], exp[keep]).pvalue > 1e-3
    for k in range(C):
        sel = b == k
        if sel.sum() > 200:
            assert stats.binomtest(int(y[sel].sum()), int(sel.sum()),
                                   params.success_probs[k]).pvalue > 1e-3


def test_batched_rollout_equals_one_env_at_a_time():
    n_envs, T, seed = 4, 150, 9
    for params in (P0, P):
        df = rollout(_rule, n_envs, T, seed, params)
        rows = []
        for i, s in enumerate(env_seeds(seed, n_envs)):
            env = LendingEnv(params)
            obs, info = env.reset(seed=s)
            for t in range(T):
                burn = t < params.burnin
                a = 1 if burn else _rule([obs])[0]
                wr = info["would_repay"]
                nxt, r, _, _, info = env.step(a)
                mb = (env.counts @ np.arange(C)) / 100
                rows.append((i, t, obs["group"], obs["bin"], a, wr, bool(a and wr), r, mb[0], mb[1],
                             -1 if burn else t - params.burnin))
                obs = nxt
        ref = pd.DataFrame(rows, columns=list(df.columns))
        pd.testing.assert_frame_equal(df, ref, check_dtype=False, atol=1e-6)
        # Same seed, same frame; one env of the batch equals that env run alone.
        pd.testing.assert_frame_equal(df, rollout(_rule, n_envs, T, seed, params))
        assert not df.equals(rollout(_rule, n_envs, T, seed + 1, params))


def test_max_profit_threshold_by_hand():
    assert max_profit_threshold(P) == Threshold(3, 1.0)  # 2p - 1 > 0  <=>  p > 0.5
    # p * 0.5 - (1 - p) > 0  <=>  p > 2/3: bins 5 and 6.
    assert max_profit_threshold(LendingParams(interest_rate=0.5)) == Threshold(5, 1.0)
    # repayment pays loan x interest: 2p - 2(1 - p) > 0  <=>  p > 1/2 (paying the interest rate alone
    # would need p > 2/3)
    assert max_profit_threshold(LendingParams(loan_amount=2.0)) == Threshold(3, 1.0)
    np.testing.assert_array_equal(Threshold(2, 0.25).approve_probs(5), [0, 0, 0.25, 1, 1])


def _lp_equal_tpr(params: LendingParams, dists: np.ndarray) -> float:
    """Reference: best expected profit over any per-bin approval probabilities with equal TPRs."""
    p = np.asarray(params.success_probs)
    m = p * params.loan_amount * params.interest_rate - (1 - p) * params.loan_amount
    wts = [1 - params.group_prob, params.group_prob]
    c = -np.concatenate([wts[g] * dists[g] * m for g in (0, 1)])
    tpr_rows = [dists[g] * p / (dists[g] * p).sum() for g in (0, 1)]
    res = optimize.linprog(c, A_eq=np.concatenate([tpr_rows[0], -tpr_rows[1]])[None],
                           b_eq=[0.0], bounds=[(0, 1)] * (2 * p.size), method="highs")
    assert res.status == 0
    return -res.fun


@pytest.mark.parametrize("params", [P, LendingParams(interest_rate=0.5, group_prob=0.3),
                                    LendingParams(interest_rate=2.0)])
def test_equal_opportunity_matches_linear_program(params):
    d = np.asarray(params.init_dists)
    p = np.asarray(params.success_probs)
    ths = equal_opportunity_thresholds(params)
    tprs = [tpr_of(ths[g].approve_probs(C), d[g], p) for g in (0, 1)]
    assert tprs[0] == pytest.approx(tprs[1], abs=1e-9)
    assert expected_profit(ths, params) == pytest.approx(_lp_equal_tpr(params, d), abs=1e-9)


def test_equal_opportunity_by_hand_on_defaults():
    """Group 0 keeps bins >= 3 (TPR 0.525/0.59); group 1 adds a share q of bin 2 to match it."""
    ths = equal_opportunity_thresholds(P)
    tpr0 = 0.525 / 0.59
    q = (tpr0 * 0.495 - 0.375) / 0.09  # group 1: repaying mass 0.495, 0.375 above bin 2
    assert ths[0] == Threshold(3, 1.0)
    assert ths[1].cutoff == 2 and ths[1].p_cutoff == pytest.approx(q)


def test_equal_opportunity_on_other_distributions():
    rng = np.random.default_rng(4)
    d = rng.dirichlet(np.ones(C), size=2)
    ths = equal_opportunity_thresholds(P, dists=d)
    assert expected_profit(ths, P, d) == pytest.approx(_lp_equal_tpr(P, d), abs=1e-9)


def test_equal_opportunity_equalises_tpr_in_rollout_max_profit_does_not():
    """20k decisions (200 envs x 100 steps), populations near their initial distributions."""
    eo = threshold_policy(equal_opportunity_thresholds(P), seed=1)
    mp = threshold_policy(max_profit_threshold(P))
    _, g_eo = gaps(timeseries(rollout(eo, 200, 100, 0, P0)))
    _, g_mp = gaps(timeseries(rollout(mp, 200, 100, 0, P0)))
    assert abs(g_eo["tpr"]) < 0.03
    assert g_mp["tpr"] > 0.10  # expected 0.890 - 0.758 on the initial distributions


def test_timeseries_and_gaps_by_hand():
    df = pd.DataFrame({
        "env":         [0, 0, 1, 1, 0, 1],
        "step":        [0, 0, 0, 0, 1, 1],
        "group":       [0, 1, 0, 1, 0, 0],
        "bin":         [3, 2, 1, 4, 3, 5],
        "action":      [1, 0, 0, 1, 1, 1],
        "would_repay": [True, True, False, True, False, True],
        "repaid":      [True, False, False, True, False, True],
        "reward":      [1.0, 0.0, 0.0, 1.0, -1.0, 1.0],
        "mean_bin_0":  [3.0, 3.0, 2.0, 2.0, 2.5, 2.5],
        "mean_bin_1":  [1.0, 1.0, 2.0, 2.0, 1.0, 3.0],
    })
    ts = timeseries(df).set_index(["step", "group"])
    assert ts.loc[(0, 0), "approval_rate"] == pytest.approx(0.5)
    assert ts.loc[(0, 0), "tpr"] == pytest.approx(1.0)
    assert ts.loc[(0, 1), "tpr"] == pytest.approx(0.5)
    assert ts.loc[(1, 0), "n"] == 4
    assert ts.loc[(1, 0), "approval_rate"] == pytest.approx(3 / 4)
    assert ts.loc[(1, 0), "tpr"] == pytest.approx(2 / 2)
    assert ts.loc[(1, 1), "approval_rate"] == pytest.approx(1 / 2)  # no group-1 applicant at step 1
    assert ts.loc[(1, 0), "mean_bin"] == pytest.approx(2.5)
    assert ts.loc[(1, 1), "mean_bin"] == pytest.approx(2.0)
    assert ts.loc[(1, 0), "profit"] == pytest.approx((1 + 0 - 1 + 1) / 2)
    assert ts.loc[(1, 1), "profit"] == pytest.approx(0.5)
    per_step, final = gaps(timeseries(df))
    assert per_step["approval_rate"].tolist() == pytest.approx([0.0, 0.25])
    assert final == pytest.approx({"approval_rate": 0.25, "tpr": 0.5, "mean_bin": 0.5,
                                   "profit": 0.0})


def test_timeseries_matches_pooled_counts_of_rollout():
    df = rollout(_rule, 5, 80, 2)
    ts = timeseries(df)
    last = ts[ts["step"] == 79].set_index("group")
    for g in (0, 1):
        sub = df[df["group"] == g]
        assert last.loc[g, "approval_rate"] == pytest.approx(sub["action"].mean())
        assert last.loc[g, "tpr"] == pytest.approx(sub[sub["would_repay"]]["action"].mean())
        assert last.loc[g, "profit"] == pytest.approx(sub["reward"].sum() / 5, rel=1e-5)


def test_describe_and_swap():
    obs = {"group": 1, "bin": 2}
    assert describe(obs) == "Applicant from group B with credit score bin 3 of 7. Decision:"
    assert describe_swapped(obs) == "Applicant from group A with credit score bin 3 of 7. Decision:"
    names, tpl = ("women", "men"), "{group} / score {bin} of {n_bins} ->"
    assert describe({"group": 0, "bin": 6}, names, tpl) == "women / score 7 of 7 ->"
    assert describe_swapped({"group": 0, "bin": 6}, names, tpl) == "men / score 7 of 7 ->"


def test_rollout_pairs_follow_the_policy():
    pairs = rollout_pairs(_rule, 2, 80, 1, names=("X", "Y"))
    df = rollout(_rule, 2, 80, 1)
    df = df[df["step"] >= P.burnin]  # burn-in approvals are not the policy's
    assert len(pairs) == len(df) == 2 * 30
    for (text, word), (_, row) in zip(pairs, df.iterrows()):
        assert text == describe({"group": row["group"], "bin": row["bin"]}, ("X", "Y"))
        assert word == (" approve" if row["action"] else " deny")


@pytest.mark.parametrize("kw", [
    {"success_probs": (0.5, 0.2)},
    {"init_dists": ((0.5, 0.5), (1.0, 0.0))},
    {"population_size": 0},
    {"group_prob": 1.5},
    {"burnin": -1},
    {"bank_starting_cash": -5.0},
])
def test_bad_params_are_user_errors(kw):
    with pytest.raises(UserError):
        LendingParams(**kw)


def test_from_dict_rejects_unknown_keys_and_round_trips():
    with pytest.raises(UserError, match="unknown"):
        LendingParams.from_dict({"interest": 1.0})
    assert LendingParams.from_dict(P.to_dict()) == P


def test_policy_must_return_one_decision_per_observation():
    with pytest.raises(UserError):
        rollout(lambda batch: [1], 3, 2, 0, P0)


# ---------------------------------------------------------------- burn-in, cash, re-optimised reference


def test_burnin_approves_everyone_then_the_policy_decides():
    env = LendingEnv(LendingParams(burnin=3))
    env.reset(seed=0)
    decided = [env.step(0)[4]["decided"] for _ in range(5)]
    assert [d["action"] for d in decided] == [1, 1, 1, 0, 0]
    assert [d["burnin"] for d in decided] == [True, True, True, False, False]
    calls = []

    def deny(batch):
        calls.append(len(batch))
        return [0] * len(batch)

    df = rollout(deny, 2, 10, 0, LendingParams(burnin=4))
    assert calls == [2] * 6  # not asked during the 4 burn-in steps
    assert (df.loc[df["step"] < 4, "action"] == 1).all() and (df.loc[df["step"] >= 4, "action"] == 0).all()
    assert df.loc[df["step"] < 4, "call"].eq(-1).all() and df.loc[df["step"] >= 4, "call"].tolist() == \
        [0, 1, 2, 3, 4, 5] * 2
    assert P.burnin == 50  # ML-fairness-gym's lending experiment (experiments/lending.py)


def test_bank_cash_and_its_stopping_rule_by_hand():
    # every approved applicant defaults: cash 2.5 -> 1.5 -> 0.5 < 1 (one loan): the episode ends
    params = LendingParams(success_probs=(0.0, 0.0), init_dists=((0.5, 0.5), (0.5, 0.5)), burnin=0,
                           bank_starting_cash=2.5)
    env = LendingEnv(params)
    _, info = env.reset(seed=0)
    assert info["cash"] == 2.5
    _, _, term, _, info = env.step(0)  # a denial costs nothing
    assert info["cash"] == 2.5 and not term
    _, r, term, _, info = env.step(1)
    assert (r, info["cash"], term) == (-1.0, 1.5, False)
    _, r, term, _, info = env.step(1)
    assert (r, info["cash"], term) == (-1.0, 0.5, True)
    with pytest.raises(UserError, match="reset"):
        env.step(1)
    # every approved applicant repays: + loan x interest = 2 x 0.25 each time, never below one loan
    rich = LendingParams(success_probs=(1.0, 1.0), init_dists=((0.5, 0.5), (0.5, 0.5)), burnin=0,
                         loan_amount=2.0, interest_rate=0.25, bank_starting_cash=2.0)
    env = LendingEnv(rich)
    env.reset(seed=0)
    for k in range(1, 4):
        _, r, term, _, info = env.step(1)
        assert (r, info["cash"], term) == (0.5, 2.0 + 0.5 * k, False)
    # a rollout stops each environment when its bank is out of cash, and ends when all are
    df = rollout(lambda b: [1] * len(b), 3, 50, 0, params)
    assert df.groupby("env").size().tolist() == [2, 2, 2] and df["step"].max() == 1


class RecordingOracle(EqualOpportunityOracle):
    def __init__(self, params):
        super().__init__(params)
        self.seen: list[np.ndarray] = []

    def __call__(self, dists):
        self.seen.append(np.array(dists))
        return super().__call__(dists)


def test_equal_opportunity_oracle_reoptimises_by_hand():
    """One group-1 agent moves from bin 2 to bin 3: group 1's repaying mass is then 0.4965, 0.381 of
    it above bin 2; the same TPR as group 0 (0.525 / 0.59) needs a share q of bin 2 (0.0855)."""
    d = np.asarray(P.init_dists).copy()
    d[1, 2] -= 0.01
    d[1, 3] += 0.01
    ths = EqualOpportunityOracle(P)(d)
    q = (0.525 / 0.59 * 0.4965 - 0.381) / 0.0855
    assert ths[0] == Threshold(3, 1.0) and ths[1].cutoff == 2 and ths[1].p_cutoff == pytest.approx(q)
    assert ths[1].p_cutoff != pytest.approx(equal_opportunity_thresholds(P)[1].p_cutoff)
    assert expected_profit(ths, P, d) == pytest.approx(_lp_equal_tpr(P, d), abs=1e-9)


def test_the_oracle_sees_the_current_distributions_at_every_step():
    oracle = RecordingOracle(P0)
    df = rollout(threshold_policy(oracle, seed=2), 3, 60, 5, P0)
    assert len(oracle.seen) == 3 * 60  # every environment, every step
    counts = initial_counts(P0)
    counts = np.stack([counts] * 3)
    for t in range(60):
        for e in range(3):
            np.testing.assert_allclose(oracle.seen[t * 3 + e], counts[e] / 100, atol=1e-12)
        for _, row in df[df["step"] == t].iterrows():
            if row["action"]:
                new = min(max(row["bin"] + (1 if row["repaid"] else -1), 0), C - 1)
                counts[row["env"], row["group"], row["bin"]] -= 1
                counts[row["env"], row["group"], new] += 1
    assert not np.allclose(oracle.seen[-1], oracle.seen[0])  # the populations moved
    # and the decisions follow the thresholds of the moment: bins away from the cutoff are decided
    for k, (_, row) in enumerate(df.sort_values(["step", "env"]).iterrows()):
        th = oracle(oracle.seen[k])[row["group"]]
        if row["bin"] != th.cutoff:
            assert row["action"] == int(row["bin"] > th.cutoff)
