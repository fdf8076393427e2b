"""The performance paths give the results of the straightforward ones: completion-only output head
and fused AdamW in training, partial-sort nucleus sampling, adapters swapped into one base.

Each test keeps a plain reference implementation (full logits, for-loop AdamW, full sort, a fresh
model per arm) and compares on the tiny random model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lorafair.models import generate as gen_mod
from lorafair.models import sources as models
from lorafair.arms.bank import wrap_for_training
from lorafair.study.config import Arm, TrainingConfig
from lorafair.training.encoding import collate, completion_loss, encode, pack, packing_works
from lorafair.training.loop import make_scheduler, schedule_order, train

from conftest import CORPUS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

FULL = Arm("full", "full")
LORA = Arm("lora-r4", "lora", rank=4, alpha=8.0,
           target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))


@pytest.fixture(scope="module")
def rows(tok):
    return encode(tok, CORPUS, 32)


def reference_loss(model, batch) -> torch.Tensor:
    """Mean cross-entropy over completion tokens from the model's full [b, s, V] logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("arm", [FULL, LORA], ids=["full", "lora"])
def test_completion_loss_and_gradients_match_full_logits(arm, packed, rows, tok):
    model = wrap_for_training(models.load_model("tiny-random"), arm, seed=0)
    with torch.no_grad():  # let LoRA's B be non-zero so its gradients and output are not trivial
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    # varied lengths (9 to 19 tokens, each with completion tokens), so padding and packing both matter
    items = [{"input_ids": r["input_ids"][:n], "labels": r["labels"][:n]} for r, n in zip(rows, (19, 10, 12, 9, 16, 13))]
    batch = collate(items, tok.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    ref = reference_loss(model, batch)
    ref_grads = torch.autograd.grad(ref, params)
    mine = pack(items, tok.pad_token_id) if packed else batch
    if packed:  # fewer rows of the same length, the same completion tokens as the padded batch
        assert mine["input_ids"].shape[1] == batch["input_ids"].shape[1] and mine["input_ids"].shape[0] < 6
        assert int((mine["labels"] != -100).sum()) == int((batch["labels"][:, 1:] != -100).sum())
    got = completion_loss(model, mine)
    got_grads = torch.autograd.grad(got, params)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5 if packed else 1e-6)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 if packed else 1e-7)
    summed = completion_loss(model, mine, reduction="sum")
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert summed.item() == pytest.approx(ref.item() * n, rel=1e-5)


def reference_train(model, train_rows, cfg: TrainingConfig, seed: int, lr: float, pad_id: int) -> list[float]:
    """The plain loop: same order and schedule, full logits, for-loop AdamW; returns the loss per step."""
    order = schedule_order(len(train_rows), cfg.batch_size, cfg.max_steps, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, foreach=False)
    sched = make_scheduler(opt, cfg, cfg.max_steps)
    torch.manual_seed(seed)
    model.train()
    losses = []
    for idx in order:
        loss = reference_loss(model, collate([train_rows[i] for i in idx], pad_id))
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return losses


@pytest.mark.parametrize("arm,lr", [(FULL, 1e-3), (LORA, 1e-2)], ids=["full", "lora"])
def test_loss_curve_matches_reference_loop(arm, lr, rows, tok):
    cfg = TrainingConfig(max_steps=6, batch_size=4, max_length=32, warmup_ratio=0.2, eval_every=100,
                         checkpoint_every=100)
    fast = wrap_for_training(models.load_model("tiny-random"), arm, seed=3)
    slow = wrap_for_training(models.load_model("tiny-random"), arm, seed=3)
    res = train(fast, arm, rows, [], cfg, seed=3, lr=lr, pad_id=tok.pad_token_id)
    ref = reference_train(slow, rows, cfg, seed=3, lr=lr, pad_id=tok.pad_token_id)
    got = [r["loss"] for r in res.log]
    assert got == pytest.approx(ref, rel=1e-5)
    assert ref[-1] < ref[0]  # the run learns, so equal curves are not two flat lines
    for (n, a), (_, b) in zip(fast.named_parameters(), slow.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=n)


def reference_pick(scores, u, temperature, top_p):
    """Inverse-CDF sampling on the full sort of the vocabulary."""
    probs = torch.softmax(scores.float() / temperature, dim=-1)
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    csum = sorted_p.cumsum(-1)
    kept = sorted_p * ((csum - sorted_p) < top_p)
    csum = kept.cumsum(-1)
    j = torch.searchsorted(csum, (u * csum[:, -1]).unsqueeze(-1)).clamp(max=csum.shape[-1] - 1)
    return idx.gather(-1, j).squeeze(-1)


def test_pick_matches_full_sort_on_both_paths():
    g = torch.Generator().manual_seed(0)
    vocab = 5000
    scales = torch.tensor([8.0] * 40 + [3.0] * 40 + [0.05] * 40)  # peaked, moderate, nearly flat
    scores = torch.randn(len(scales), vocab, generator=g) * scales[:, None]
    scores[:10, 1:4] = scores[:10, 0:1]  # exact ties at the top of ten peaked rows
    scores[10:20, 5] = scores[10:20].max(1).values + 1.0
    scores[10:20, 6] = scores[10:20, 5]  # tied top-2
    fast_rows = 0
    for top_p in (0.3, 0.9, 0.99, 1.0):
        probs = torch.softmax(scores, -1)
        top = probs.topk(gen_mod.TOPK_CANDIDATES, -1).values
        fast_rows += int((((top.cumsum(-1) - top) < top_p)[:, -1] == 0).sum()) if top_p < 1 else 0
        for trial in range(3):
            u = torch.rand(len(scales), generator=g)
            assert torch.equal(gen_mod.pick(scores, u, 1.0, top_p), reference_pick(scores, u, 1.0, top_p))
        assert torch.equal(gen_mod.pick(scores, u, 0.7, top_p), reference_pick(scores, u, 0.7, top_p))
    assert 0 < fast_rows < 3 * len(scales)  # both the partial-sort and the full-sort path ran


def test_generate_same_continuations_as_full_sort(tok, monkeypatch):
    model = models.load_model("tiny-random").eval()
    prompts = [{"id": f"p{i}", "prompt": r["prompt"]} for i, r in enumerate(CORPUS[:6])]
    # a low temperature gives the random model peaked distributions, as a trained model has
    kw = dict(samples=3, max_new_tokens=6, seed=5, temperature=0.07, top_p=0.9, batch_size=8)
    fast = gen_mod.generate(model, tok, prompts, **kw)
    monkeypatch.setattr(gen_mod, "pick", reference_pick)
    slow = gen_mod.generate(model, tok, prompts, **kw)
    assert fast == slow
    assert len({r["continuation"] for r in fast}) > 3


def test_adapters_swapped_into_one_base_match_fresh_loads(tmp_path):
    import bench_sweep

    adapters = bench_sweep.make_adapters(tmp_path, source="tiny-random", n=2, rank=2)
    prompts = [{"id": f"p{i}", "prompt": r["prompt"]} for i, r in enumerate(CORPUS[:3])]
    texts = [r["prompt"] + r["completion"] for r in CORPUS[3:7]]
    bank = bench_sweep.sweep_bank("tiny-random", adapters, prompts, texts)
    fresh = bench_sweep.sweep_fresh("tiny-random", adapters, prompts, texts)
    assert set(bank) == {"arm0", "arm1"}
    for arm in bank:
        assert bank[arm]["continuations"] == fresh[arm]["continuations"]
        assert bank[arm]["kl"] == pytest.approx(fresh[arm]["kl"], rel=1e-5)
        assert bank[arm]["kl"] > 0
    assert bank["arm0"]["kl"] != pytest.approx(bank["arm1"]["kl"], rel=1e-3)


def test_packing_check_rejects_a_model_that_lets_sequences_mix(rows, tok):
    """A model whose attention ignores the position restarts fails the check, so training pads."""
    model = models.load_model("tiny-random")
    assert packing_works(model, rows[:4], tok.pad_token_id)
    forward = model.forward

    def no_restarts(**kw):  # positions 0..n-1 over the whole row: one long sequence, no mask
        if "position_ids" in kw:
            kw["position_ids"] = torch.arange(kw["input_ids"].shape[1])[None]
        return forward(**kw)

    model.get_decoder = lambda: None  # the loss goes through model.forward
    model.forward = no_restarts
    assert not packing_works(model, rows[:4], tok.pad_token_id, rtol=1e-6)
    assert not packing_works(model, rows[:2], tok.pad_token_id, rtol=1e-6)  # two sequences, as train() checks
