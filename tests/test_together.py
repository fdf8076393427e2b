"""Several LoRA adapters trained together on one base equal each trained alone (padded batches,
dropout 0): the same loss curves, validation losses and adapter weights up to float rounding."""

from __future__ import annotations

import pytest
import torch

from lorafair.arms.bank import wrap_for_training
from lorafair.models import sources as models
from lorafair.study.config import Arm, TrainingConfig
from lorafair.training.encoding import encode
from lorafair.training.loop import total_steps, train
from lorafair.training.together import Job, attach, train_together

from conftest import CORPUS

T = ("q_proj", "v_proj", "up_proj")


def _jobs(rows):
    return [Job("a", Arm("lora-r2", "lora", rank=2, alpha=4.0, target_modules=T), 0, 1e-2, rows[:16], rows[16:20]),
            Job("b", Arm("lora-r4", "lora", rank=4, alpha=8.0, target_modules=T), 1, 5e-3, rows[:12], rows[16:20]),
            Job("c", Arm("lora-r2", "lora", rank=2, alpha=4.0, target_modules=T, variant="rslora"), 2, 2e-2,
                rows[4:20], rows[20:])]


def _cfg():
    return TrainingConfig(max_steps=None, epochs=1, batch_size=4, max_length=32, eval_every=10**6,
                          checkpoint_every=10**6, packing=False, schedule="cosine", warmup_ratio=0.25)


def test_adapters_start_as_they_would_alone(tok):
    rows = encode(tok, CORPUS, 32)
    jobs = _jobs(rows)
    together = attach(models.load_model("tiny-random", seed=0), jobs)
    for j in jobs:
        alone = wrap_for_training(models.load_model("tiny-random", seed=0), j.arm, j.seed)
        mine = {n.replace(f".{j.key}.", ".default."): p for n, p in together.named_parameters() if f".{j.key}." in n}
        theirs = {n: p for n, p in alone.named_parameters() if "lora_" in n}
        assert mine.keys() == theirs.keys()
        for n, p in theirs.items():
            assert torch.equal(mine[n], p), n


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_together_equals_alone(tok, grad_accum):
    rows = encode(tok, CORPUS, 32)
    jobs = _jobs(rows)
    cfg = _cfg()
    cfg.grad_accum = grad_accum
    model, res = train_together(models.load_model("tiny-random", seed=0), jobs, cfg, tok.pad_token_id)
    assert [r.steps for r in res.values()] == [total_steps(cfg, len(j.train_rows)) for j in jobs]
    if grad_accum == 1:
        assert [r.steps for r in res.values()] == [4, 3, 4]  # each adapter its own schedule length
    for j in jobs:
        alone = wrap_for_training(models.load_model("tiny-random", seed=0), j.arm, j.seed)
        r = train(alone, j.arm, j.train_rows, j.val_rows, cfg, j.seed, j.lr, tok.pad_token_id)
        assert len(r.log) == len(res[j.key].log)
        for a, b in zip(r.log, res[j.key].log):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["lr"] == pytest.approx(a["lr"])
        assert res[j.key].final_val_loss == pytest.approx(r.final_val_loss, rel=1e-5)
        mine = {n.replace(f".{j.key}.", ".default."): p for n, p in model.named_parameters() if f".{j.key}." in n}
        for n, p in alone.named_parameters():
            if "lora_" in n:
                assert torch.allclose(mine[n], p, atol=1e-5, rtol=1e-4), n
        assert any("lora_B" in n and p.abs().max() > 1e-4 for n, p in alone.named_parameters())  # it trained


def test_refuses_dora_and_duplicate_keys(tok):
    rows = encode(tok, CORPUS, 32)
    dora = Job("d", Arm("dora-r2", "lora", rank=2, alpha=4.0, target_modules=T, variant="dora"), 0, 1e-2, rows[:4])
    with pytest.raises(ValueError, match="DoRA|dora"):
        train_together(models.load_model("tiny-random", seed=0), [dora], _cfg(), tok.pad_token_id)
    j = _jobs(rows)[0]
    with pytest.raises(ValueError, match="own key"):
        train_together(models.load_model("tiny-random", seed=0), [j, j], _cfg(), tok.pad_token_id)


def test_together_in_bf16_keeps_adapters_float32(tok):
    rows = encode(tok, CORPUS, 32)
    jobs = _jobs(rows)[:2]
    _, r32 = train_together(models.load_model("tiny-random", seed=0), jobs, _cfg(), tok.pad_token_id)
    model, r16 = train_together(models.load_model("tiny-random", seed=0), jobs, _cfg(), tok.pad_token_id,
                                autocast=torch.bfloat16)
    assert all(p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16) for p in model.parameters())
    for k in r32:
        a, b = [x["loss"] for x in r32[k].log], [x["loss"] for x in r16[k].log]
        assert max(abs(x - y) for x, y in zip(a, b)) < 5e-3 and a != b
