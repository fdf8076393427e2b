"""Token KL, shift captured, target log-likelihood and the streaming pairwise KL."""

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import log_softmax as np_log_softmax
from scipy.special import rel_entr, softmax

from lorafair.analysis.kl import kl_against, log_probs, shift_captured, summarize, target_logprob, token_kl
from lorafair.analysis.shift import compute_pairwise_kl
from lorafair.errors import UserError


def _ref_kl(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    return rel_entr(softmax(lp.astype(np.float64), -1), softmax(lq.astype(np.float64), -1)).sum(-1)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_token_kl_matches_scipy(chunk):
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 5, 50, generator=g) * 3
    q = torch.randn(3, 5, 50, generator=g) * 3
    got = token_kl(p, q, chunk_size=chunk)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _ref_kl(p.numpy(), q.numpy()), atol=1e-5)
    assert torch.all(token_kl(p, p).abs() < 1e-6)


def test_kl_against_reference_logprobs():
    g = torch.Generator().manual_seed(4)
    a, b, c = (torch.randn(2, 3, 20, generator=g) * 2 for _ in range(3))
    (ab, ba), (ac, ca) = kl_against(a, [log_probs(b, 2), log_probs(c, 5)], chunk_size=4)
    np.testing.assert_allclose(ab.numpy(), _ref_kl(a.numpy(), b.numpy()), atol=1e-5)
    np.testing.assert_allclose(ba.numpy(), _ref_kl(b.numpy(), a.numpy()), atol=1e-5)
    np.testing.assert_allclose(ca.numpy(), _ref_kl(c.numpy(), a.numpy()), atol=1e-5)
    np.testing.assert_allclose(ac.numpy(), _ref_kl(a.numpy(), c.numpy()), atol=1e-5)


def test_token_kl_bfloat16_input_runs_in_float32():
    g = torch.Generator().manual_seed(1)
    p = (torch.randn(2, 4, 30, generator=g) * 2).to(torch.bfloat16)
    q = (torch.randn(2, 4, 30, generator=g) * 2).to(torch.bfloat16)
    ref = _ref_kl(p.float().numpy(), q.float().numpy())
    np.testing.assert_allclose(token_kl(p, q).numpy(), ref, atol=1e-5)


def test_summarize():
    v = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    s = summarize(v)
    assert s == {"mean": 2.5, "median": 2.5, "p90": pytest.approx(3.7), "n": 4}
    assert summarize(np.array([]))["n"] == 0


def test_shift_captured_hand_case():
    # every resample has ratio 1/2 -> value, lo, hi all 0.5
    out = shift_captured(np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0, 2.0]), n_boot=200)
    assert out["value"] == pytest.approx(0.5) and out["lo"] == pytest.approx(0.5) and out["hi"] == pytest.approx(0.5)
    # hand: 1 - (0+1)/2 / ((2+2)/2) = 0.75
    out = shift_captured(np.array([0.0, 1.0]), np.array([2.0, 2.0]), n_boot=500, seed=3)
    assert out["value"] == pytest.approx(0.75)
    # resamples are {0,0},{0,1},{1,1} -> 1.0, 0.75, 0.5
    assert out["lo"] == pytest.approx(0.5) and out["hi"] == pytest.approx(1.0)
    assert np.isnan(shift_captured(np.ones(3), np.zeros(3))["value"])


def test_shift_captured_interval_matches_scipy_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.0, 300)
    arm = base * rng.uniform(0.2, 0.6, 300)
    out = shift_captured(arm, base, n_boot=4000, seed=1)

    def stat(a, b, axis=-1):
        return 1 - a.mean(axis) / b.mean(axis)

    ref = stats.bootstrap((arm, base), stat, paired=True, n_resamples=4000, method="percentile", rng=2)
    assert out["value"] == pytest.approx(stat(arm, base))
    assert out["lo"] == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert out["hi"] == pytest.approx(ref.confidence_interval.high, abs=0.01)


def test_target_logprob_matches_numpy():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 11, generator=g)
    ids = torch.randint(0, 11, (2, 6), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]])
    got = target_logprob(logits, ids, mask, chunk_size=3)
    lp = np_log_softmax(logits.numpy().astype(np.float64), -1)
    want0 = np.mean([lp[0, t - 1, ids[0, t]] for t in (2, 3, 4)])
    assert got[0].item() == pytest.approx(want0, abs=1e-5)
    assert torch.isnan(got[1])


# ------------------------------------------------------------------ compute_pairwise_kl

V = 17


def _toy_logits_fn():
    """Deterministic per-arm logits from the ids (a fixed table per arm), independent of batching."""
    tables = {a: torch.randn(V, V, generator=torch.Generator().manual_seed(i)) * (1 + i) for i, a in enumerate(["base", "full", "lora-4", "lora-1"])}
    calls = []

    def fn(arm, ids, attn):
        calls.append(arm)
        return tables[arm][ids]

    return fn, tables, calls


def _data(n=10, s=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, s), generator=g)
    lengths = torch.randint(2, s + 1, (n,), generator=g)
    attn = (torch.arange(s)[None] < lengths[:, None]).long()
    loss = attn.clone()
    loss[:, :2] = 0
    return ids, attn, loss


def _batches(ids, attn, loss, bs):
    return [
        {"input_ids": ids[i : i + bs], "attention_mask": attn[i : i + bs], "loss_mask": loss[i : i + bs]}
        for i in range(0, len(ids), bs)
    ]


def test_pairwise_kl_matches_direct_and_is_batching_invariant():
    fn, tables, calls = _toy_logits_fn()
    ids, attn, loss = _data()
    arms = ["base", "full", "lora-4", "lora-1"]
    res = compute_pairwise_kl(fn, arms, _batches(ids, attn, loss, 3), n_boot=300)
    # references once per batch: 4 batches x (base + full + 2 lora arms)
    assert calls.count("base") == 4 and calls.count("full") == 4 and calls.count("lora-4") == 4

    # direct computation with numpy/scipy, token by token
    valid = [(i, t) for i in range(len(ids)) for t in range(ids.shape[1] - 1) if attn[i, t] and attn[i, t + 1]]
    lp = {a: tables[a][ids].numpy() for a in arms}
    for arm in ["lora-4", "lora-1"]:
        a_base = np.array([_ref_kl(lp[arm][i, t], lp["base"][i, t]) for i, t in valid])
        full_a = np.array([_ref_kl(lp["full"][i, t], lp[arm][i, t]) for i, t in valid])
        s = res["summary"]["arms"][arm]
        assert s["kl_arm_base"]["mean"] == pytest.approx(a_base.mean(), abs=1e-5)
        assert s["kl_arm_base"]["n"] == len(valid)
        assert s["kl_full_arm"]["median"] == pytest.approx(np.median(full_a), abs=1e-5)
        rows = res["rows"][res["rows"]["arm"] == arm]
        np.testing.assert_allclose(rows["kl_arm_base"].to_numpy(), a_base, atol=1e-5)
        # shift captured over per-sequence means
        per_seq = lambda a, b: np.array([np.mean([_ref_kl(lp[a][i, t], lp[b][i, t]) for j, t in valid if j == i]) for i in range(len(ids))])
        want = 1 - per_seq("full", arm).mean() / per_seq("full", "base").mean()
        assert s["shift_captured"]["value"] == pytest.approx(want, abs=1e-5)
        assert s["shift_captured"]["lo"] <= s["shift_captured"]["value"] <= s["shift_captured"]["hi"]
        # target log-likelihood
        lps = np_log_softmax(lp[arm].astype(np.float64), -1)
        per = [[lps[i, t - 1, ids[i, t]] for t in range(ids.shape[1]) if loss[i, t]] for i in range(len(ids))]
        per = [np.mean(x) for x in per if x]
        assert s["target_logprob"] == pytest.approx(np.mean(per), abs=1e-5)
    assert res["summary"]["arms"]["full"]["shift_captured"]["value"] == pytest.approx(1.0)
    assert res["summary"]["arms"]["base"]["shift_captured"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert res["summary"]["arms"]["base"]["kl_arm_base"]["mean"] == pytest.approx(0.0, abs=1e-6)

    other = compute_pairwise_kl(_toy_logits_fn()[0], arms, _batches(ids, attn, loss, 4), n_boot=300)
    for arm in arms:
        a, b = res["summary"]["arms"][arm], other["summary"]["arms"][arm]
        for k in ("kl_arm_base", "kl_base_arm", "kl_full_arm", "kl_arm_full"):
            assert a[k]["mean"] == pytest.approx(b[k]["mean"], abs=1e-6)
            assert a[k]["p90"] == pytest.approx(b[k]["p90"], abs=1e-6)
        assert a["shift_captured"] == pytest.approx(b["shift_captured"], abs=1e-6)
    assert res["rows"].drop(columns="arm").to_numpy() == pytest.approx(other["rows"].drop(columns="arm").to_numpy(), abs=1e-6)


def test_pairwise_kl_without_full_and_errors():
    fn, _, calls = _toy_logits_fn()
    ids, attn, _ = _data(n=4)
    res = compute_pairwise_kl(fn, ["lora-4"], [{"input_ids": ids, "attention_mask": attn}], reference=("base", None))
    s = res["summary"]["arms"]["lora-4"]
    assert s["shift_captured"] is None and s["target_logprob"] is None and s["kl_full_arm"]["n"] == 0
    assert "full" not in calls
    with pytest.raises(UserError):
        compute_pairwise_kl(fn, ["lora-4"], [])
    with pytest.raises(UserError):
        compute_pairwise_kl(fn, [], [{"input_ids": ids}])
