"""Several LoRA adapters trained together on one copy of a frozen base.

Each adapter is one job (an arm, a seed, a learning rate, its rows). Every step, each adapter's
micro-batch joins one padded batch; every row runs under its own adapter (PEFT's per-row
``adapter_names``, here in training mode), and the loss is the sum over adapters of each adapter's
mean completion loss, so each adapter's gradient is that of its own batch alone. Each adapter has
its own AdamW, schedule (the length `total_steps` gives its rows), gradient clipping and example
order (by its seed), so the result is that of training each alone with ``train`` on padded batches
(``training.packing: false``), up to float rounding of the joint batch. LoRA dropout masks come from
one shared random stream, so with dropout > 0 the adapters see other masks than alone (the same
distribution); with dropout 0 (the default) the numbers agree.

What a batch of several adapters buys: the frozen base's matrix products run once per step on a
larger batch (better use of the matrix units, especially on a GPU), and the base is held once.
Not covered here: checkpoints, early stopping and best-weight restoring of ``train``; validation
loss is computed at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lorafair.arms import kinds
from lorafair.arms.bank import check_arm, lora_config
from lorafair.models import precision as prec
from lorafair.study.config import Arm, TrainingConfig
from lorafair.training.encoding import _decoder_and_head, collate
from lorafair.training.loop import make_optimizer, make_scheduler, schedule_order, total_steps


@dataclass
class Job:
    key: str  # the adapter's name in the PEFT model
    arm: Arm
    seed: int
    lr: float
    train_rows: list[dict]
    val_rows: list[dict] = field(default_factory=list)


@dataclass
class JobResult:
    steps: int
    log: list[dict] = field(default_factory=list)  # step, loss, lr
    final_val_loss: float = float("nan")


def attach(base: nn.Module, jobs: list[Job]) -> nn.Module:
    """A PEFT model of ``base`` with one LoRA adapter per job, each initialised under its job's seed
    exactly as ``wrap_for_training`` initialises it alone; every adapter's weights train."""
    from peft import get_peft_model

    for job in jobs:
        if not kinds.is_lora(job.arm) or not kinds.variant(job.arm).shares_batch:
            raise ValueError(f"{job.key}: only plain and rsLoRA adapters train together, not {job.arm.name} "
                             "(PEFT does not mix DoRA rows in one batch)")
        check_arm(base, job.arm)
    model = None
    for job in jobs:
        torch.manual_seed(job.seed)
        if model is None:
            model = get_peft_model(base, lora_config(job.arm), adapter_name=job.key)
        else:
            model.add_adapter(job.key, lora_config(job.arm))
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return model


def _adapter_params(model: nn.Module, key: str) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if "lora_" in n and f".{key}." in n]


class _RowAdapters:
    """Forward pre-hooks giving every LoRA layer the adapter of each row (``names``), in training
    mode too (PEFT's own route refuses adapter_names there)."""

    def __init__(self, model: nn.Module):
        self.names: list[str] | None = None
        self.hooks = [m.register_forward_pre_hook(self._hook, with_kwargs=True)
                      for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "_mixed_batch_forward")]

    def _hook(self, module, args, kwargs):
        if self.names is not None:
            kwargs["adapter_names"] = self.names
        return args, kwargs

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _row_losses(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per completion token: the float32 cross-entropy and the row it belongs to."""
    dec, head, cap = _decoder_and_head(model)
    target = batch["labels"][:, 1:]
    hidden = dec(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)[0]
    keep = target != -100
    logits = head(hidden[:, :-1][keep]).float()
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, target[keep], reduction="none"), keep.nonzero()[:, 0]


def _joint_loss(model, hooks: _RowAdapters, parts: list[tuple[str, list[dict]]], pad_id: int, dev, autocast):
    """{key: mean completion loss of its rows} from one forward pass over every part's rows."""
    items = [x for _, rows in parts for x in rows]
    hooks.names = [key for key, rows in parts for _ in rows]
    batch = {k: v.to(dev) for k, v in collate(items, pad_id).items()}
    with prec.compute(autocast, dev):
        ce, row = _row_losses(model, batch)
    out, start = {}, 0
    for key, rows in parts:
        sel = (row >= start) & (row < start + len(rows))
        out[key] = ce[sel].mean()
        start += len(rows)
    return out


def train_together(base: nn.Module, jobs: list[Job], cfg: TrainingConfig, pad_id: int,
                   autocast: torch.dtype | None = None) -> tuple[nn.Module, dict[str, JobResult]]:
    """Train one LoRA adapter per job on ``base`` together (see the module's docstring); returns the
    PEFT model holding every adapter and each job's result. ``base`` is modified in place."""
    if len({j.key for j in jobs}) != len(jobs) or not jobs:
        raise ValueError("train_together: give at least one job, each with its own key")
    model = attach(base, jobs)
    prec.for_training(model, autocast)
    dev = next(model.parameters()).device
    plan = {}
    for j in jobs:
        steps = total_steps(cfg, len(j.train_rows))
        params = _adapter_params(model, j.key)
        opt = make_optimizer(params, j.lr, cfg.weight_decay)
        plan[j.key] = (j, steps, schedule_order(len(j.train_rows), cfg.batch_size, steps * cfg.grad_accum, j.seed),
                       params, opt, make_scheduler(opt, cfg, steps))
    results = {j.key: JobResult(steps=plan[j.key][1]) for j in jobs}
    hooks = _RowAdapters(model)
    model.train()
    try:
        for step in range(max(p[1] for p in plan.values())):
            active = [k for k, p in plan.items() if step < p[1]]
            t0, sums = time.perf_counter(), dict.fromkeys(active, 0.0)
            for m in range(cfg.grad_accum):
                parts = [(k, [plan[k][0].train_rows[i] for i in plan[k][2][step * cfg.grad_accum + m]]) for k in active]
                losses = _joint_loss(model, hooks, parts, pad_id, dev, autocast)
                (sum(losses.values()) / cfg.grad_accum).backward()
                for k in active:
                    sums[k] += float(losses[k].detach()) / cfg.grad_accum
            for k in active:
                _, _, _, params, opt, sched = plan[k]
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                results[k].log.append({"step": step + 1, "loss": sums[k], "lr": sched.get_last_lr()[0],
                                       "seconds": time.perf_counter() - t0})
        model.eval()
        for j in jobs:
            results[j.key].final_val_loss = _val_loss(model, hooks, j, cfg.batch_size, pad_id, dev, autocast)
    finally:
        hooks.remove()
    return model, results


@torch.no_grad()
def _val_loss(model, hooks: _RowAdapters, job: Job, batch_size: int, pad_id: int, dev, autocast) -> float:
    """Token-weighted mean completion loss of the job's validation rows under its adapter."""
    total, count = 0.0, 0
    for i in range(0, len(job.val_rows), batch_size):
        rows = job.val_rows[i:i + batch_size]
        hooks.names = [job.key] * len(rows)
        batch = {k: v.to(dev) for k, v in collate(rows, pad_id).items()}
        with prec.compute(autocast, dev):
            ce, _ = _row_losses(model, batch)
        total, count = total + float(ce.sum()), count + ce.numel()
    return total / count if count else float("nan")
