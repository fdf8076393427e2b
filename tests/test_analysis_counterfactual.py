"""Counterfactual divergence: JS/KL against scipy, exact zero, group order, per layer, intervals."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from transformers import LlamaConfig, LlamaForCausalLM

from lorafair.analysis import counterfactual as C
from lorafair.analysis.lens import lens_hidden, project

V = 64


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def test_pair_divergences_match_scipy():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(20, 0.5), size=(4, 3))  # 4 prompts, 3 positions
    pairs = torch.tensor([[0, 1], [2, 3], [1, 3]])
    got = C.pair_divergences(torch.tensor(np.log(probs)), pairs)
    for m, (a, b) in enumerate(pairs.tolist()):
        for j in range(3):
            p, q = probs[a, j], probs[b, j]
            assert got["js"][m, j].item() == pytest.approx(jensenshannon(p, q) ** 2, abs=1e-6)
            assert got["kl_ab"][m, j].item() == pytest.approx(rel_entr(p, q).sum(), abs=1e-6)
            assert got["kl_ba"][m, j].item() == pytest.approx(rel_entr(q, p).sum(), abs=1e-6)


def test_pair_divergences_float32_close_to_scipy():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(200), size=(2, 1))
    got = C.pair_divergences(torch.tensor(np.log(probs), dtype=torch.float32), torch.tensor([[0, 1]]))
    assert got["js"][0, 0].item() == pytest.approx(jensenshannon(probs[0, 0], probs[1, 0]) ** 2, abs=1e-6)


def test_identical_rows_give_exactly_zero():
    logits = torch.randn(1, 5, 1000) * 4
    got = C.pair_divergences(torch.cat([logits, logits]), torch.tensor([[0, 1]]))
    for name in C.DIVERGENCES:
        assert torch.equal(got[name], torch.zeros(1, 5))


def _items(terms=("A", "B", "C"), genders=("f", "m"), templates=("t1", "t2"), ids=None, cont=(9, 10, 11)):
    """Identity items with token ids: template prefix, one token per term, one per gender."""
    ids = ids or {"A": 5, "B": 6, "C": 7, "f": 20, "m": 21, "t1": 30, "t2": 31}
    out = []
    for t in templates:
        for term in terms:
            for g in genders:
                out.append({"template_id": t, "axis": "race", "gender": g, "group": f"race={term}",
                            "prompt_ids": [1, ids[t], ids[term], ids[g], 3], "cont_ids": list(cont)})
    return out


def _model_fns(model):
    def logits_fn(ids, attn):
        return model(input_ids=ids, attention_mask=attn).logits

    return logits_fn, (lambda ids, attn: lens_hidden(model, ids, attn)), (lambda h: project(model, h))


def test_template_pairs_same_axis_and_gender_sorted():
    items = _items(terms=("B", "A"), templates=("t1",))
    pairs = C.template_pairs(items)
    assert len(pairs) == 2  # A-B for each gender
    for a, b in pairs:
        assert items[a]["gender"] == items[b]["gender"]
        assert items[a]["group"] < items[b]["group"]


def test_zero_when_identity_tokens_look_the_same():
    """A model whose embedding maps the identity-term tokens to one vector: exactly 0."""
    model = tiny_llama()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[6] = emb[5]
        emb[7] = emb[5]
    logits_fn, hidden_fn, project_fn = _model_fns(model)
    rows = C.compute_divergence(_items(), 3, 0, logits_fn, hidden_fn, project_fn)
    assert (rows[list(C.DIVERGENCES)].to_numpy() == 0).all()
    assert set(rows["layer"]) == {C.OUTPUT_LAYER, 0, 1, 2}
    # and not zero when they differ
    other = C.compute_divergence(_items(), 3, 0, _model_fns(tiny_llama())[0])
    assert (other["js"] > 0).all()


def test_invariant_to_group_order():
    model = tiny_llama()
    logits_fn = _model_fns(model)[0]
    a = C.compute_divergence(_items(terms=("A", "B", "C")), 3, 0, logits_fn)
    b = C.compute_divergence(_items(terms=("C", "A", "B"), genders=("m", "f")), 3, 0, logits_fn)
    key = ["template_id", "gender", "group_a", "group_b", "layer"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key], b[key])
    np.testing.assert_allclose(a[list(C.DIVERGENCES)], b[list(C.DIVERGENCES)], atol=1e-6)
    assert C.overall(a) == pytest.approx(C.overall(b), abs=1e-7)


def test_last_layer_equals_model_output():
    model = tiny_llama(3)
    rows = C.compute_divergence(_items(), 4, 0, *_model_fns(model))
    out = rows[rows["layer"] == C.OUTPUT_LAYER].reset_index(drop=True)
    last = rows[rows["layer"] == 2].reset_index(drop=True)
    assert len(out) == len(last) > 0
    np.testing.assert_allclose(last[list(C.DIVERGENCES)], out[list(C.DIVERGENCES)], atol=1e-6)
    assert not np.allclose(rows[rows["layer"] == 0]["js"], out["js"])
    strided = C.compute_divergence(_items(), 4, 0, None, *_model_fns(model)[1:], layer_stride=2)
    assert sorted(set(strided["layer"])) == [0, 2]


def test_positions_follow_the_shared_continuation():
    ids, attn, pos = C.build_batch([[1, 2, 3], [4, 5]], [7, 8, 9], k=3, pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 7, 8], [4, 5, 7, 8, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert pos.tolist() == [[2, 3, 4], [1, 2, 3]]
    _, _, short = C.build_batch([[1, 2]], [], k=8, pad_id=0)
    assert short.tolist() == [[1]]


def test_summaries_by_hand():
    rows = pd.DataFrame({"template_id": ["t1", "t1", "t2"], "group_a": ["a", "a", "a"],
                         "group_b": ["b", "c", "b"], "js": [0.1, 0.3, 0.5]})
    assert C.overall(rows) == pytest.approx((0.2 + 0.5) / 2)
    assert C.group_pair_means(rows) == pytest.approx({"a | b": 0.3, "a | c": 0.3})
    assert C.reduction_share(0.3, 0.1, 0.5) == pytest.approx(0.5)
    assert C.reduction_share(0.1, 0.1, 0.5) == pytest.approx(1.0)
    assert np.isnan(C.reduction_share(0.3, 0.2, 0.2))


def _per_template(d: dict[str, float], seeds=(0, 1), templates=8, noise=0.0, rng=None):
    rows = []
    for arm, value in d.items():
        for s in ((0,) if arm == "base" else seeds):
            for t in range(templates):
                e = rng.normal(0, noise) if rng is not None else 0.0
                rows.append({"arm": arm, "seed": s, "template_id": f"t{t}", "js": value + e,
                             "kl_ab": value, "kl_ba": value})
    return pd.DataFrame(rows)


def test_summarize_arms_values_and_caveat():
    res = C.summarize_arms(_per_template({"base": 0.5, "full": 0.1, "lora-r1": 0.3}))
    assert res["lora-r1"]["js"]["value"] == pytest.approx(0.3)
    assert res["lora-r1"]["minus_full"]["value"] == pytest.approx(0.2)
    assert res["lora-r1"]["reduction_share"]["value"] == pytest.approx(0.5)
    assert res["base"]["minus_full"]["value"] == pytest.approx(0.4)
    assert res["full"]["minus_full"] is None
    # full did not lower D: the share comes with the caveat
    flat = C.summarize_arms(_per_template({"base": 0.1, "full": 0.1, "lora-r1": 0.3}))
    assert flat["lora-r1"]["caveat"] and np.isnan(flat["lora-r1"]["reduction_share"]["value"])


def test_arm_identical_to_full_differs_by_exactly_zero():
    rng = np.random.default_rng(0)
    table = _per_template({"base": 0.5, "full": 0.2}, noise=0.05, rng=rng)
    twin = table[table["arm"] == "full"].assign(arm="lora-r4")
    res = C.summarize_arms(pd.concat([table, twin], ignore_index=True))
    d = res["lora-r4"]["minus_full"]
    assert d["value"] == 0 and d["lo"] == 0 and d["hi"] == 0
    assert res["lora-r4"]["reduction_share"]["value"] == pytest.approx(1.0)
    js = res["full"]["js"]
    assert js["lo"] < js["value"] < js["hi"] and js["n_seeds"] == 2 and js["n_units"] == 8



def test_noise_floor_is_the_seed_to_seed_distance_of_full():
    rows = []
    for s, shift in ((0, 0.0), (1, 0.02), (2, -0.01)):  # full's D per seed: 0.10, 0.12, 0.09
        for t in range(4):
            rows.append({"arm": "full", "seed": s, "template_id": f"t{t}", "js": 0.1 + shift + (0.01 if t % 2 else -0.01),
                         "kl_ab": 0.0, "kl_ba": 0.0})
    res = C.summarize_arms(pd.DataFrame(rows))
    nf = res["full"]["noise_floor"]
    assert [p[:2] for p in nf["pairs"]] == [[0, 1], [1, 2]]
    assert nf["value"] == pytest.approx((0.02 + 0.03) / 2) and nf["max"] == pytest.approx(0.03)
    one = C.summarize_arms(_per_template({"base": 0.5, "full": 0.1}, seeds=(0,)))
    assert one["full"]["noise_floor"] is None
