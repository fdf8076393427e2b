"""Length-sorted scoring: probes (sequence_loglik), the pairwise KL and the counterfactual pass batch
by length and give every result in the order the inputs came, equal to unsorted scoring up to float
rounding of the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorafair.analysis import counterfactual as C
from lorafair.analysis.shift import compute_pairwise_kl
from lorafair.models import lm
from lorafair.models import sources as models

TEXTS = ["Hi", "A basket of apples and pears for everyone in the house, and bread.", "The garden was quiet.",
         "ok then", "Everyone agreed to meet again next week to talk it over calmly and fairly."]


@pytest.fixture(scope="module")
def model():
    return models.load_model("tiny-random", seed=0).eval()


def test_length_order_is_longest_first_and_stable():
    assert lm.length_order([3, 5, 3, 1, 5]) == [1, 4, 0, 2, 3]
    assert lm.length_order([]) == []


def test_sequence_loglik_sorted_equals_one_at_a_time(model, tok):
    total, count = lm.sequence_loglik(model, tok, TEXTS, batch_size=2)
    for i, t in enumerate(TEXTS):
        one, n = lm.sequence_loglik(model, tok, [t], batch_size=1)
        assert float(total[i]) == pytest.approx(float(one[0]), rel=1e-5, abs=1e-4)
        assert float(count[i]) == float(n[0]) == len(tok.encode(t, add_special_tokens=False))
    rev, _ = lm.sequence_loglik(model, tok, TEXTS[::-1], batch_size=2)
    assert torch.allclose(rev.flip(0), total, rtol=1e-5, atol=1e-4)


def test_sequence_loglik_pads_less(model, tok, monkeypatch):
    """Sorted, the batches carry fewer padding positions than in file order."""
    widths = []
    real = model.forward

    def spy(*a, **k):
        widths.append(k["input_ids"].numel())
        return real(*a, **k)

    monkeypatch.setattr(model, "forward", spy)
    lm.sequence_loglik(model, tok, TEXTS, batch_size=2)
    lens = [len(lm.start_ids(tok)) + len(tok.encode(t, add_special_tokens=False)) for t in TEXTS]
    in_order = sum(len(TEXTS[i:i + 2]) * max(lens[i:i + 2]) for i in range(0, len(TEXTS), 2))
    assert sum(widths) < in_order


def _kl_inputs(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (n,), generator=g).tolist()
    ids = [torch.randint(0, 50, (L,), generator=g).tolist() for L in lengths]
    heads = {a: torch.randn(50, 50, generator=g) * s for a, s in (("base", 0.0), ("full", 0.5), ("lora", 0.2))}
    emb = torch.randn(50, 50, generator=g)

    def logits_fn(arm, x, attn):  # a position-wise toy model: logits depend on the token only
        return emb[x] @ (torch.eye(50) + heads[arm])

    return ids, logits_fn


def _batches(ids, order, bs, with_seq):
    out = []
    for i in range(0, len(order), bs):
        rows = [ids[j] for j in order[i:i + bs]]
        w = max(len(r) for r in rows)
        b = {"input_ids": torch.tensor([r + [0] * (w - len(r)) for r in rows]),
             "attention_mask": torch.tensor([[1] * len(r) + [0] * (w - len(r)) for r in rows])}
        if with_seq:
            b["seq"] = torch.tensor(order[i:i + bs])
        out.append(b)
    return out


def test_pairwise_kl_same_with_length_sorted_batches():
    ids, fn = _kl_inputs()
    arms = ["base", "full", "lora"]
    plain = compute_pairwise_kl(fn, arms, _batches(ids, list(range(len(ids))), 3, False), n_boot=200)
    order = lm.length_order([len(x) for x in ids])
    assert order != list(range(len(ids)))
    by_len = compute_pairwise_kl(fn, arms, _batches(ids, order, 3, True), n_boot=200)
    for col in ("kl_arm_base", "kl_full_arm"):
        np.testing.assert_allclose(by_len["rows"][col].to_numpy(), plain["rows"][col].to_numpy(), rtol=1e-6, atol=1e-7)
    assert (by_len["rows"][["arm", "seq", "pos"]].to_numpy() == plain["rows"][["arm", "seq", "pos"]].to_numpy()).all()
    a, b = by_len["summary"]["arms"]["lora"], plain["summary"]["arms"]["lora"]
    assert a["shift_captured"] == pytest.approx(b["shift_captured"], rel=1e-6)
    assert a["kl_arm_base"]["mean"] == pytest.approx(b["kl_arm_base"]["mean"], rel=1e-6)
    # without 'seq' the sorted batches would number sequences in batch order: a different pairing
    wrong = compute_pairwise_kl(fn, arms, _batches(ids, order, 3, False), n_boot=200)
    assert not np.allclose(wrong["sequences"]["kl_full_arm"].to_numpy(), plain["sequences"]["kl_full_arm"].to_numpy())


def test_template_batches_join_similar_templates():
    lengths = [[5, 5], [9, 8, 9], [4], [9, 9]]
    got = C.template_batches(lengths, batch_rows=5)
    assert sorted(g for b in got for g in b) == [0, 1, 2, 3]
    assert got[0] == [1, 3] and all(sum(len(lengths[g]) for g in b) <= 5 for b in got)
    assert C.template_batches([[1] * 7], batch_rows=4) == [[0]]  # a large template goes alone


def _cf_items(tok):
    items = []
    for t, (tmpl, cont) in enumerate([("The {} worked as a", " nurse at"), ("My {} neighbour said that the", " weather"),
                                      ("A {} walked in", " and sat")]):
        for group, word in (("a", "man"), ("b", "woman"), ("c", "young person")):
            items.append({"template_id": f"t{t}", "axis": "gender", "gender": "x", "group": group,
                          "prompt_ids": tok.encode(tmpl.format(word), add_special_tokens=False),
                          "cont_ids": tok.encode(cont, add_special_tokens=False)})
    return items


def test_counterfactual_batched_by_length_equals_one_template_at_a_time(model, tok):
    items = _cf_items(tok)

    def logits_fn(ids, attn):
        return model(input_ids=ids, attention_mask=attn).logits

    calls = []

    def counted(ids, attn):
        calls.append(ids.shape[0])
        return logits_fn(ids, attn)

    one = C.compute_divergence(items, 3, tok.pad_token_id, logits_fn, batch_rows=1)
    joined = C.compute_divergence(items, 3, tok.pad_token_id, counted, batch_rows=32)
    assert calls == [9]  # three templates, one forward pass
    assert list(joined["template_id"]) == list(one["template_id"])
    assert list(joined["group_b"]) == list(one["group_b"])
    for col in ("js", "kl_ab", "kl_ba"):
        np.testing.assert_allclose(joined[col].to_numpy(), one[col].to_numpy(), rtol=1e-4, atol=1e-7)
