"""Logit Lens on tiny random Llama and Gemma 3 models, toxic token ids, and the streaming lens."""

import copy

import numpy as np
import pytest
import torch
from scipy.special import rel_entr, softmax
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lorafair.analysis.lens import (
    default_toxic_words,
    find_norm_and_head,
    layer_logits,
    lens_fns,
    toxic_token_ids,
)
from lorafair.analysis.shift import compute_lens, top_tokens_per_layer
from lorafair.errors import UserError

SIZES = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**SIZES)).eval()


def tiny_gemma(seed=0, softcap=None):
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(**SIZES, head_dim=8, sliding_window=4, final_logit_softcapping=softcap)
    return Gemma3ForCausalLM(cfg).eval()


def _inputs(b=2, s=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (b, s), generator=g)
    attn = torch.ones_like(ids)
    attn[1, -2:] = 0  # right padding in the second row
    return ids, attn


def _raw_layer_outputs(model, layers, ids, attn):
    """Independent path: decoder layer outputs captured by forward hooks (raw residual streams)."""
    got = []

    def hook(_m, _i, out):
        got.append(out[0] if isinstance(out, tuple) else out)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn).logits
    finally:
        for h in handles:
            h.remove()
    return got, logits


@pytest.mark.parametrize("build", [tiny_llama, lambda: tiny_gemma(softcap=None), lambda: tiny_gemma(softcap=3.0)], ids=["llama", "gemma3", "gemma3-softcap"])
def test_last_layer_equals_model_logits_and_middle_layers_use_final_norm(build):
    model = build()
    ids, attn = _inputs()
    lens = layer_logits(model, ids, attn)
    raw, logits = _raw_layer_outputs(model, model.model.layers, ids, attn)
    assert len(lens) == 3 and lens[-1].dtype == torch.float32
    torch.testing.assert_close(lens[-1], logits.float(), atol=0, rtol=0)
    cap = model.config.final_logit_softcapping if hasattr(model.config, "final_logit_softcapping") else None
    for i in range(3):
        with torch.no_grad():
            want = model.lm_head(model.model.norm(raw[i]))
            if cap:
                want = cap * torch.tanh(want / cap)
        torch.testing.assert_close(lens[i], want, atol=1e-5, rtol=1e-5)
    if cap:
        assert lens[0].abs().max() <= cap
    # the layers really differ (the lens is not returning one tensor three times)
    assert (lens[0] - lens[-1]).abs().max() > 1e-3


def test_peft_wrapped_model():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    norm, head = find_norm_and_head(model)
    assert norm is model.get_base_model().model.norm and head is model.get_base_model().lm_head
    ids, attn = _inputs()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits
    torch.testing.assert_close(layer_logits(model, ids, attn)[-1], logits.float(), atol=0, rtol=0)


def test_generic_layout_and_error():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)).eval()
    norm, head = find_norm_and_head(gpt2)
    assert norm is gpt2.transformer.ln_f and head is gpt2.lm_head
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        logits = gpt2(input_ids=ids).logits
    torch.testing.assert_close(layer_logits(gpt2, ids)[-1], logits, atol=0, rtol=0)
    with pytest.raises(UserError, match="final norm"):
        find_norm_and_head(torch.nn.Linear(3, 3))


class FakeTokenizer:
    vocab = {" damn": 5, "damn": 6, " heck": 7, "fudge": 9}

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return [self.vocab[text]] if text in self.vocab else [1, 2]


def test_toxic_token_ids():
    ids, mapping = toxic_token_ids(FakeTokenizer(), ["damn", "heck", "fudge", "gosh"])
    assert ids == [5, 6, 7, 9]
    assert mapping == {"damn": [5, 6], "heck": [7], "fudge": [9], "gosh": []}
    words = default_toxic_words()
    assert len(words) > 800 and "anal" in words
    ids, mapping = toxic_token_ids(FakeTokenizer())
    assert set(mapping) == set(words)


# ------------------------------------------------------------------ streaming lens


def _arms():
    base = tiny_llama(0)
    full = copy.deepcopy(base)
    lora = copy.deepcopy(base)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for p in lora.model.layers[1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    return {"base": base, "full": full, "lora": lora}


def _kl(lp, lq):
    return rel_entr(softmax(lp.astype(np.float64), -1), softmax(lq.astype(np.float64), -1)).sum(-1)


def test_compute_lens_matches_direct_computation_and_batching():
    models = _arms()
    hidden_fn, project_fn = lens_fns(models.__getitem__)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 128, (5, 6), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 4:] = 0
    attn[4, 1:] = 0
    tox = [3, 17, 99]
    arms = ["base", "full", "lora"]
    batches = [{"input_ids": ids[i : i + 2], "attention_mask": attn[i : i + 2]} for i in range(0, 5, 2)]
    res = compute_lens(hidden_fn, project_fn, arms, batches, tox, n_examples=3)

    lens = {a: [x.numpy() for x in layer_logits(m, ids, attn)] for a, m in models.items()}
    real = attn.bool().numpy()
    last = [int(np.nonzero(r)[0].max()) for r in real]
    for arm in arms:
        for layer in range(3):
            row = res["summary"][arm][layer]
            kb = _kl(lens[arm][layer], lens["base"][layer])[real]
            kf = _kl(lens[arm][layer], lens["full"][layer])[real]
            prob = softmax(lens[arm][layer].astype(np.float64), -1)[..., tox].sum(-1)
            assert row["kl_base"] == pytest.approx(kb.mean(), abs=1e-5)
            assert row["kl_full"] == pytest.approx(kf.mean(), abs=1e-5)
            assert row["toxic_mass_mean"] == pytest.approx(prob[real].mean(), abs=1e-6)
            assert row["toxic_mass_last"] == pytest.approx(np.mean([prob[i, t] for i, t in enumerate(last)]), abs=1e-6)
    assert res["summary"]["lora"][0]["kl_base"] == pytest.approx(0.0, abs=1e-6)  # layer 1 untouched before it
    assert res["summary"]["lora"][2]["kl_base"] > 1e-4
    assert len(res["rows"]) == 3 * 5 * 3

    ex = res["examples"]["full"]
    assert np.array(ex["ids"]).shape == (3, 3, 5)
    top = torch.from_numpy(lens["full"][1][2, last[2]]).softmax(-1).topk(5)
    assert ex["ids"][2][1] == top.indices.tolist()
    np.testing.assert_allclose(ex["probs"][2][1], top.values.numpy(), atol=1e-6)

    again = compute_lens(hidden_fn, project_fn, arms, [{"input_ids": ids, "attention_mask": attn}], tox)
    for arm in arms:
        for a, b in zip(res["summary"][arm], again["summary"][arm]):
            assert a == pytest.approx(b, abs=1e-6)


def test_top_tokens_per_layer_decodes():
    models = _arms()
    hidden_fn, project_fn = lens_fns(models.__getitem__)
    ids, attn = _inputs()

    class Dec:
        def decode(self, toks):
            return f"<{toks[0]}>"

    out = top_tokens_per_layer(hidden_fn, project_fn, "base", ids, attn, k=3, tokenizer=Dec())
    lens = layer_logits(models["base"], ids, attn)
    want = lens[2][1, 4].softmax(-1).topk(3)  # row 1 has its last real token at 4
    assert out["ids"][1][2] == want.indices.tolist()
    assert out["tokens"][1][2] == [f"<{t}>" for t in want.indices.tolist()]
