"""Weight-space diagnostics against numpy and hand-built matrices."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from lorafair.analysis.weights import (
    aggregate,
    delta_spectrum,
    intruder_dimensions,
    lora_vs_full,
    module_info,
    peft_deltas,
    rank_for_energy,
    rank_for_shift,
    subspace_overlap,
)


def _orth(m, r, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((m, r)))
    return torch.from_numpy(q)


def test_delta_spectrum_matches_numpy():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((40, 25)).astype(np.float32)
    out = delta_spectrum(torch.from_numpy(d), [1, 4, 16, 100])
    s = np.linalg.svd(d.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(out["singular_values"], s, rtol=1e-5)
    for r in (1, 4, 16):
        assert out["energy_at_rank"][r] == pytest.approx((s[:r] ** 2).sum() / (s**2).sum(), abs=1e-5)
    assert out["energy_at_rank"][100] == pytest.approx(1.0)
    p = s / s.sum()
    assert out["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert out["sq_norm"] == pytest.approx((d.astype(np.float64) ** 2).sum(), rel=1e-5)


def test_delta_spectrum_low_rank_and_zero():
    u, v = _orth(30, 2, 1), _orth(20, 2, 2)
    d = (u * torch.tensor([3.0, 1.0], dtype=torch.float64)) @ v.T
    out = delta_spectrum(d, [1, 2, 8])
    assert out["energy_at_rank"][1] == pytest.approx(0.9, abs=1e-5)
    assert out["energy_at_rank"][2] == pytest.approx(1.0, abs=1e-5)
    assert out["effective_rank"] == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))), rel=1e-4)
    z = delta_spectrum(torch.zeros(5, 4), [1, 2])
    assert z["energy_at_rank"] == {1: 0.0, 2: 0.0} and z["effective_rank"] == 0.0


def test_subspace_overlap():
    u = _orth(256, 8, 0)
    assert subspace_overlap(u, u) == pytest.approx(1.0)
    assert subspace_overlap(u, u @ _orth(8, 8, 9)) == pytest.approx(1.0)  # same span, other basis
    assert subspace_overlap(u[:, :4], u[:, 4:]) == pytest.approx(0.0, abs=1e-12)
    rand = np.mean([subspace_overlap(_orth(256, 8, s), _orth(256, 8, s + 100)) for s in range(20)])
    assert rand == pytest.approx(8 / 256, abs=0.006)
    # half the directions shared
    assert subspace_overlap(u[:, :4], torch.cat([u[:, :2], u[:, 6:8]], 1)) == pytest.approx(0.5)


def test_lora_vs_full():
    uf, vf = _orth(50, 6, 3), _orth(40, 6, 4)
    full = (uf * torch.arange(6, 0, -1, dtype=torch.float64)) @ vf.T
    lora = 0.5 * (uf[:, :2] * torch.tensor([6.0, 5.0], dtype=torch.float64)) @ vf[:, :2].T
    out = lora_vs_full(lora, full, r=2)
    assert out["rel_norm"] == pytest.approx(0.5 * np.sqrt(61) / np.sqrt(91), rel=1e-5)
    assert out["col_overlap"] == pytest.approx(1.0, abs=1e-5) and out["row_overlap"] == pytest.approx(1.0, abs=1e-5)
    other = lora_vs_full((uf[:, 4:] * 3) @ vf[:, 4:].T, full, r=2)
    assert other["col_overlap"] == pytest.approx(0.0, abs=1e-5) and other["row_overlap"] == pytest.approx(0.0, abs=1e-5)


def test_intruder_dimensions():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(128, 64, generator=g)
    assert intruder_dimensions(w, w.clone()) == 0
    assert intruder_dimensions(w, w + 1e-4 * torch.randn(128, 64, generator=g)) == 0
    u = torch.randn(128, generator=g)
    v = torch.randn(64, generator=g)
    tuned = w + 10 * torch.outer(u / u.norm(), v / v.norm()) * torch.linalg.matrix_norm(w, 2)
    assert intruder_dimensions(w, tuned) >= 1


def test_intruder_dimensions_hand_case():
    """Base W = diag(5, 4, 3, 2, 1) in R^{6×5}: left singular vectors e1..e5. The tuned matrix's top
    left singular vector is x = −cos θ e1 + sin θ e6 (θ = 60°), the rest e2..e5: x's largest
    |cosine| with base is 0.5 (sign ignored), every other vector's is 1."""
    base = torch.zeros(6, 5, dtype=torch.float64)
    base[:5, :5] = torch.diag(torch.tensor([5.0, 4, 3, 2, 1], dtype=torch.float64))
    e = torch.eye(6, dtype=torch.float64)
    x = -0.5 * e[0] + (3 ** 0.5 / 2) * e[5]
    u = torch.stack([x, e[1], e[2], e[3], e[4]], dim=1)  # [6, 5], orthonormal columns
    v = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0]
    tuned = u @ torch.diag(torch.tensor([10.0, 4, 3, 2, 1], dtype=torch.float64)) @ v.T
    assert intruder_dimensions(base, tuned, k=5, threshold=0.6) == 1
    assert intruder_dimensions(base, tuned, k=5, threshold=0.4) == 0
    assert intruder_dimensions(base, tuned, k=1, threshold=0.6) == 1  # x is the top direction
    assert intruder_dimensions(base, tuned, k=5, threshold=1.01) == 5  # |cos| ≤ 1 everywhere


@pytest.mark.parametrize("dora", [False, True])
def test_peft_delta_equals_merged_minus_base(dora):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    )
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False,
                     use_dora=dora)
    peft_model = get_peft_model(copy.deepcopy(base), cfg)
    if dora:  # a trained magnitude vector: away from the base weight's row norms it starts at
        g = torch.Generator().manual_seed(1)
        for n, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in n:
                p.data.mul_(1 + 0.3 * torch.rand(p.shape, generator=g))
    deltas = peft_deltas(peft_model)
    assert sorted(deltas) == sorted(f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))
    low_rank = {}
    for mod_name, mod in peft_model.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            low_rank[mod_name.removeprefix("base_model.model.")] = mod.get_delta_weight("default")
    merged = peft_model.merge_and_unload().state_dict()
    for name, d in deltas.items():
        want = merged[f"{name}.weight"] - before[f"{name}.weight"]
        assert d.shape == want.shape
        torch.testing.assert_close(d, want, atol=1e-5, rtol=0)
        assert d.abs().max() > 0
        if dora:  # the magnitude rescales whole rows of W + B·A: B·A alone is not the update
            assert (d - low_rank[name]).abs().max() > 1e-2
        else:
            assert delta_spectrum(d, [4])["energy_at_rank"][4] == pytest.approx(1.0, abs=1e-5)  # rank <= 4


def test_rank_for_energy_and_shift():
    e = [{1: 0.5, 4: 0.8, 16: 0.95}, {1: 0.1, 4: 0.6, 16: 0.85}]
    # weighted: r=16 -> (0.95*3 + 0.85*1) / 4 = 0.925; r=4 -> 0.75
    assert rank_for_energy(e, sq_norms=[3.0, 1.0], threshold=0.9) == 16
    assert rank_for_energy(e, sq_norms=[3.0, 1.0], threshold=0.75) == 4
    # unweighted: r=16 -> (0.95 + 0.85) / 2 = 0.9, r=4 -> 0.7
    assert rank_for_energy(e, threshold=0.95) is None
    assert rank_for_energy(e, threshold=0.89) == 16
    assert rank_for_energy(e, threshold=0.7) == 4
    assert rank_for_shift({64: 0.97, 4: 0.5, 16: 0.92, 8: float("nan")}) == 16
    assert rank_for_shift({4: 0.1}) is None


def test_module_info_and_aggregate():
    assert module_info("model.layers.12.self_attn.q_proj") == {"type": "q_proj", "block": "attn", "depth": 12}
    assert module_info("transformer.h.3.mlp.c_fc") == {"type": "c_fc", "block": "mlp", "depth": 3}
    assert module_info("lm_head") == {"type": "lm_head", "block": "other", "depth": -1}
    rows = pd.DataFrame(
        {
            "module": ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.0.mlp.up_proj"],
            "energy": [0.2, 0.4, 0.9],
        }
    )
    out = aggregate(rows)
    t = out["by_type"].set_index("type")
    assert t.loc["q_proj", "energy"] == pytest.approx(0.3) and t.loc["q_proj", "n"] == 2
    d = out["by_depth"].set_index("depth")
    assert d.loc[0, "energy"] == pytest.approx(0.55) and d.loc[1, "energy"] == pytest.approx(0.4)
    assert out["by_block"].set_index("block").loc["mlp", "energy"] == pytest.approx(0.9)
