"""Tests for the lending task: the LLM policy, its measures, and a whole study on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lorafair.models import sources as models
from lorafair.study.config import study_from_dict
from lorafair.errors import UserError
from lorafair.study.context import make_task, split_corpus
from lorafair.study.runner import Runner
from lorafair.tasks.lending.measures import env_series, final_by_env, pooled_timeseries, summarize
from lorafair.tasks.lending.task import (
    LendingOptions,
    case_numbers,
    decision_ids,
    llm_decide,
    llm_policy,
    observation_text,
    reference_thresholds,
)
from lending_oracles import timeseries
from lorafair.tasks.lending.env import LendingEnv, LendingParams, env_seeds, rollout
from lorafair.tasks.lending.policies import DecisionLog, EqualOpportunityOracle, threshold_policy

T, N_ENVS, BURNIN = 12, 4, 3


def _study(tmp_path, **task):
    return study_from_dict({
        "name": "lending-test",
        "model": {"source": "tiny-random"},
        "task": {"name": "lending", "options": {"T": T, "n_envs": N_ENVS, "eval_seeds": [0, 1],
                                                "env": {"burnin": BURNIN}, **task}},
        "data": {"n_examples": 32},
        "training": {"max_steps": 2, "batch_size": 4, "max_length": 40, "eval_every": 1,
                     "checkpoint_every": 1, "lr_search": {"enabled": False}},
        "evaluation": {"bootstrap": 50, "batch_size": 16},
        "analyses": {"kl": False, "lens": False, "weights": False, "n_sequences": 4},
        "arms": ["base", "full", {"type": "lora", "ranks": [2]}],
        "seeds": [0],
        "output": str(tmp_path / "run"),
    })


@pytest.fixture(scope="module")
def tiny():
    tok = models.load_tokenizer("tiny-random")
    model = models.load_model("tiny-random", seed=0).eval()
    return model, tok


def _random_rollout(seed: int = 0, n_envs: int = 3, steps: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return rollout(lambda b: rng.integers(0, 2, len(b)).tolist(), n_envs, steps, seed, LendingParams(burnin=5))


def test_env_series_equals_timeseries_of_each_env_alone():
    df = _random_rollout()
    ours = env_series(df)
    for e in range(3):
        ref = timeseries(df[df["env"] == e])
        mine = ours[ours["env"] == e].reset_index(drop=True)
        for col in ("approval_rate", "tpr", "mean_bin", "profit"):
            np.testing.assert_allclose(mine[col].to_numpy(), ref[col].to_numpy(), equal_nan=True)


def test_pooled_timeseries_equals_timeseries_of_all_envs():
    df = _random_rollout(seed=3)
    pooled = pooled_timeseries(env_series(df))
    ref = timeseries(df)
    for col in ("approval_rate", "tpr", "mean_bin", "profit"):
        np.testing.assert_allclose(pooled[col].to_numpy(), ref[col].to_numpy(), rtol=1e-6, equal_nan=True)


def test_final_gaps_by_hand():
    df = _random_rollout(seed=5, n_envs=2, steps=30)
    fin = final_by_env(env_series(df).assign(env_seed=0))
    for e in range(2):
        d = df[df["env"] == e]
        g0, g1 = d[d["group"] == 0], d[d["group"] == 1]
        tpr = [x[x["would_repay"]]["action"].mean() for x in (g0, g1)]
        row = fin[fin["env"] == e].iloc[0]
        assert row["approval_rate"] == pytest.approx(g0["action"].mean() - g1["action"].mean())
        assert row["tpr"] == pytest.approx(tpr[0] - tpr[1])
        assert row["profit_total"] == pytest.approx(d["reward"].sum())
        assert row["mean_bin"] == pytest.approx(d["mean_bin_0"].iloc[-1] - d["mean_bin_1"].iloc[-1])


def test_case_numbers_are_fixed_four_digit_and_spread():
    a = np.concatenate([case_numbers(7, 20, t) for t in range(50)])
    assert a.min() >= 1000 and a.max() <= 9999
    assert len(np.unique(a)) > 900
    np.testing.assert_array_equal(case_numbers(7, 20, 3), case_numbers(7, 20, 3))
    o = LendingOptions(case_numbers=False)
    assert observation_text({"group": 1, "bin": 2}, o, 7, 1234) == \
        "Applicant from group B with credit score bin 3 of 7. Decision:"


def test_decision_words_must_be_single_tokens(tiny):
    _, tok = tiny
    assert decision_ids(tok) == [tok(" deny", add_special_tokens=False)["input_ids"][0],
                                 tok(" approve", add_special_tokens=False)["input_ids"][0]]

    class Splitting:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, 2]}

    with pytest.raises(UserError, match="single-token"):
        decision_ids(Splitting())


def test_policy_decision_is_argmax_of_a_direct_forward(tiny):
    model, tok = tiny
    ids = decision_ids(tok)
    texts = [observation_text({"group": g, "bin": b}, LendingOptions(), 7, 4321)
             for g in (0, 1) for b in range(7)]
    a, p = llm_decide(model, tok, texts, ids, batch_size=5)
    for text, ai, pi in zip(texts, a, p):
        with torch.no_grad():
            logits = model(**tok(text, return_tensors="pt")).logits[0, -1].double()
        assert ai == int(logits[ids[1]] > logits[ids[0]])
        assert pi == pytest.approx(torch.sigmoid(logits[ids[1]] - logits[ids[0]]).item(), abs=1e-5)


def test_batched_rollout_equals_one_env_at_a_time(tiny):
    """The batched LLM policy, run by `rollout`, takes the same decisions as stepping every
    environment alone and scoring its one prompt alone."""
    model, tok = tiny
    o, ids, steps, seed = LendingOptions(), decision_ids(tok), 6, 11
    log = DecisionLog()
    params = LendingParams(burnin=0)
    df = rollout(llm_policy(model, tok, o, 7, seed, ids, log, batch_size=3), N_ENVS, steps, seed, params)
    for e, s in enumerate(env_seeds(seed, N_ENVS)):
        env = LendingEnv(params)
        obs, _ = env.reset(seed=s)
        actions = []
        for t in range(steps):
            case = int(case_numbers(seed, N_ENVS, t)[e])
            a, _ = llm_decide(model, tok, [observation_text(obs, o, 7, case)], ids)
            actions.append(int(a[0]))
            obs, *_ = env.step(actions[-1])
        assert df[df["env"] == e]["action"].tolist() == actions
    np.testing.assert_array_equal(log.rows_of(df)[:, 0], df["action"].to_numpy())


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="reference"):
        make_task(_study(tmp_path, reference="greedy"))
    with pytest.raises(UserError, match="unknown key"):
        make_task(_study(tmp_path, env={"interest": 2.0}))
    with pytest.raises(UserError, match="template"):
        make_task(_study(tmp_path, template="{person} asks. Decision:"))
    with pytest.raises(UserError, match="groups"):
        make_task(_study(tmp_path, groups=["x", "x"]))
    with pytest.raises(UserError, match="burn-in"):
        make_task(_study(tmp_path, env={"burnin": T}))


def test_competence_pooled_and_seed_by_seed(tmp_path):
    """A seed that approves everyone after burn-in fails the check alone; the arm fails only when its
    seeds together are constant; base is never checked; decisions inside burn-in do not count."""
    task = make_task(_study(tmp_path))

    def rows(approve_all: bool) -> pd.DataFrame:  # 4 applicants a step, steps 0..T-1
        steps = np.repeat(np.arange(T), 4)
        approved = np.ones_like(steps) if approve_all else (np.arange(len(steps)) % 2)
        approved[steps < BURNIN] = 0  # burn-in rows are not the policy's: they must not count
        return pd.DataFrame({"step": steps, "approved": approved, "n": 1})

    results = {("base", 0): rows(True), ("full", 0): rows(False), ("full", 1): rows(True),
               ("lora-r1", 0): rows(True), ("lora-r1", 1): rows(True), ("lora-r8", 0): rows(False)}
    assert task.seed_competence(results) == {("full", 1): "a constant policy", ("lora-r1", 0): "a constant policy",
                                             ("lora-r1", 1): "a constant policy"}
    assert task.competence(results, {}) == {"lora-r1": "a constant policy: it approves 100.0% of applicants "
                                                       "after burn-in"}


def test_corpus_follows_the_reference_and_splits_by_application(tmp_path, tok):
    ctx = type("Ctx", (), {"tokenizer": tok})()
    task = make_task(_study(tmp_path))  # equal opportunity re-optimised at every step
    assert isinstance(task.thresholds, EqualOpportunityOracle)
    frame = task._reference_frame(task.data.seed, 32)
    assert len(frame) == 32 and (frame["step"] >= BURNIN).all() and (frame["call"] >= 0).all()
    assert [r["completion"] for r in task.build_corpus(ctx)] == [
        " approve" if a else " deny" for a in frame["action"]]
    task = make_task(_study(tmp_path, reference="equal-opportunity-fixed"))
    rows = task.build_corpus(ctx)
    assert len(rows) == 32
    lo, hi = task.thresholds
    for r in rows:
        th = (lo, hi)[r["group"]]
        if r["bin"] != th.cutoff:
            assert r["completion"] == (" approve" if r["bin"] > th.cutoff else " deny")
    assert all(r["prompt"].startswith("Application ") for r in rows)
    assert len(split_corpus(rows, 0.15, 0.15)["train"]) >= 12


@pytest.mark.slow
def test_study_end_to_end_on_tiny_model(tmp_path):
    study = _study(tmp_path)
    runner = Runner(study, log=lambda m: None)
    results = runner.run(analyses=False, report=False)
    assert set(results) == {("base", 0), ("full", 0), ("lora-r2", 0)}
    for (arm, seed), rows in results.items():
        assert len(rows) == 2 * N_ENVS * T * 2  # eval seeds x envs x steps x groups
        assert {"env_seed", "env", "step", "group", "approval_rate", "tpr", "mean_bin",
                "profit"} <= set(rows.columns)
        summary = json.loads((runner.rd.arm_dir(arm, seed) / "eval" / "lending.json").read_text())
        for m in ("tpr_gap", "approval_gap", "mean_bin_gap", "profit", "flip_rate"):
            rec = summary["metrics"][m]
            assert rec["lo"] <= rec["value"] <= rec["hi"] or np.isnan(rec["value"])
        fin = final_by_env(rows)
        assert summary["metrics"]["mean_bin_gap"]["value"] == pytest.approx(fin["mean_bin"].mean())
        assert set(summary["reference"]) == {"equal-opportunity", "equal-opportunity-fixed", "max-profit"}
    cmp = json.loads((runner.rd.path / "compare.json").read_text())
    assert set(cmp["pooled"]) == {"base", "full", "lora-r2"}
    assert set(cmp["minus_full"]) == {"base", "lora-r2"}
    ref = cmp["reference"]["max-profit"]["approval_gap"]
    assert ref["value"] == pytest.approx(
        summary["reference"]["max-profit"]["metrics"]["approval_gap"]["value"])
    diff = cmp["minus_full"]["lora-r2"]["mean_bin_gap"]["value"]
    expect = (final_by_env(results[("lora-r2", 0)])["mean_bin"].mean()
              - final_by_env(results[("full", 0)])["mean_bin"].mean())
    assert diff == pytest.approx(expect)
    failing = runner.task.seed_competence(results)  # the fit gate notes the seeds the task's check fails
    assert (cmp["fit"]["lora-r2"]["seeds_failing"] is None) == (("lora-r2", 0) not in failing)


def test_flip_rate_is_per_environment_from_the_decision_log(tmp_path):
    """The swapped decisions of a threshold policy, counted per environment: the flip rate is the
    mean over environments of each environment's share, its interval over environments."""
    task = make_task(_study(tmp_path))
    ths = reference_thresholds("max-profit", task.params)
    logs = {}

    def policy(seed, log):
        logs[seed] = log
        return threshold_policy((ths[0], ths[1]), seed, log)

    rows = task._rollouts(policy)
    fin = final_by_env(rows)
    for s, log in logs.items():
        lg = np.stack(log.parts, axis=1)  # [env, policy step, 4]: burn-in steps are not the policy's
        assert lg.shape == (N_ENVS, T - BURNIN, 4)
        want = (lg[..., 0] != lg[..., 1]).mean(axis=1)
        got = fin[fin["env_seed"] == s].sort_values("env")["flip_rate"].to_numpy()
        np.testing.assert_allclose(got, want)
    summary = summarize(rows, 200)
    assert summary["metrics"]["flip_rate"]["value"] == pytest.approx(fin["flip_rate"].mean())
    assert summary["metrics"]["flip_rate"]["n_envs"] == 2 * N_ENVS
    assert "mean_abs_delta_p" not in summary["metrics"]  # a threshold policy has no probabilities
    assert "use at least 30" in summary["warnings"][0]
