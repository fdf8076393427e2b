"""KL pooled over seeds (analysis.seeds) against hand computations on made-up per-sequence tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lorafair.analysis.seeds import FLOOR, pool_kl, rank_difference


def _table(values: dict[str, np.ndarray], n_tokens: np.ndarray) -> pd.DataFrame:
    """values: arm -> [S, U] per-sequence mean KL(full||arm); n_tokens: [U] (same under every seed)."""
    rows = []
    for arm, v in values.items():
        for s in range(v.shape[0]):
            for u in range(v.shape[1]):
                rows.append({"arm": arm, "seed": s, "seq": u, "n_tokens": int(n_tokens[u]),
                             "kl_full_arm": v[s, u], "kl_arm_full": v[s, u] / 2,
                             "kl_arm_base": 0.1, "kl_base_arm": 0.1})
    return pd.DataFrame(rows)


def test_pooled_values_match_hand_computation():
    rng = np.random.default_rng(0)
    S, U = 4, 12
    n = rng.integers(3, 20, U)
    base = 1.0 + rng.random((S, U))
    arm = 0.3 + 0.1 * rng.random((S, U))
    floor = 0.1 + 0.05 * rng.random((S, U))
    got = pool_kl(_table({"base": base, "lora-r4": arm, FLOOR: floor}, n), ["base", "lora-r4"])
    a = got["arms"]["lora-r4"]
    # token-weighted: sum over every (seed, sequence) of mean × tokens, over the tokens
    assert a["kl_full_arm"]["mean"] == pytest.approx((arm * n).sum() / (n.sum() * S))
    # shift captured: 1 − mean over cells of KL(full||arm) / the same of KL(full||base)
    assert a["shift_captured"]["value"] == pytest.approx(1 - arm.mean() / base.mean())
    assert a["shift_captured"]["lo"] < a["shift_captured"]["value"] < a["shift_captured"]["hi"]
    nf = got["noise_floor"]
    assert nf["kl_full_arm"]["mean"] == pytest.approx((floor * n).sum() / (n.sum() * S))
    assert nf["shift_captured"]["value"] == pytest.approx(1 - floor.mean() / base.mean())
    bf = a["beyond_floor"]
    assert bf["value"] == pytest.approx(a["kl_full_arm"]["mean"] - nf["kl_full_arm"]["mean"])
    assert bf["word"] == "further than another seed of full" and bf["lo"] > 0
    assert got["n_seeds"] == S and got["n_sequences"] == U


def test_an_arm_at_the_floor_is_not_distinguishable_and_one_below_is_closer():
    rng = np.random.default_rng(1)
    S, U = 5, 16
    n = np.full(U, 10)
    floor = 0.2 + 0.05 * rng.standard_normal((S, U))
    same = floor + 0.05 * rng.standard_normal((S, U))  # the floor plus noise centred on 0
    same -= (same - floor).mean()  # exactly no mean difference
    closer = floor * 0.5
    got = pool_kl(_table({"base": np.ones((S, U)), "a": same, "b": closer, FLOOR: floor}, n), ["base", "a", "b"])
    assert got["arms"]["a"]["beyond_floor"]["word"] == "not distinguishable from another seed of full"
    assert got["arms"]["b"]["beyond_floor"]["word"] == "closer than another seed of full"


def test_an_arm_with_fewer_seeds_is_paired_on_its_own_seeds():
    rng = np.random.default_rng(2)
    S, U = 5, 8
    n = np.full(U, 7)
    base = 1 + rng.random((S, U))
    arm = 0.5 * base[:3]  # trained on three seeds only: half of base's KL on each of those
    t = _table({"base": base, FLOOR: 0.1 * base}, n)
    t = pd.concat([t, _table({"lora-r1": arm}, n)], ignore_index=True)
    got = pool_kl(t, ["base", "lora-r1"])
    a = got["arms"]["lora-r1"]
    assert a["seeds"] == [0, 1, 2] and a["kl_full_arm"]["n_seeds"] == 3
    assert a["shift_captured"]["value"] == pytest.approx(0.5)  # base on the same three seeds, not all five
    assert got["arms"]["base"]["kl_full_arm"]["n_seeds"] == 5


def test_no_floor_without_a_second_seed():
    got = pool_kl(_table({"base": np.ones((1, 4)), "a": 0.5 * np.ones((1, 4))}, np.full(4, 3)), ["base", "a"])
    assert got["noise_floor"] is None and got["arms"]["a"]["beyond_floor"] is None
    assert got["arms"]["a"]["shift_captured"]["value"] == pytest.approx(0.5)


def test_rank_difference_pairs_on_shared_seeds():
    rng = np.random.default_rng(3)
    S, U = 4, 10
    n = rng.integers(2, 9, U)
    low = 0.4 + 0.1 * rng.random((S, U))
    high = low[:2] - 0.2  # the higher rank has two seeds; its KL is 0.2 below on each
    t = pd.concat([_table({"lora-r1": low}, n), _table({"lora-r8": high}, n)], ignore_index=True)
    rec = rank_difference(t, "lora-r1", "lora-r8")
    assert rec["n_seeds"] == 2 and rec["value"] == pytest.approx(0.2)
    assert rec["lo"] == pytest.approx(0.2) and rec["hi"] == pytest.approx(0.2)  # a constant difference
