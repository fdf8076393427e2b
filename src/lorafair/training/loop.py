"""The one training loop for every arm: loss on completion tokens only, AdamW, warm-up then decay,
gradient accumulation and clipping, checkpoints that make a killed run resume to the same result.

The weights an arm keeps are those of its best validation evaluation (restored at the end when a
later evaluation was worse), whether or not early stopping fired.

Determinism: the order of examples is fixed by (seed, epoch) and computed up front; the torch RNG
state (dropout, LoRA init) is saved with every checkpoint, so a resumed run continues the same
random stream as an uninterrupted one.

Processes: the loop runs under an accelerate ``Accelerator``; in one process it is the plain loop;
launched by torchrun or ``accelerate launch`` on N processes, every micro-batch is split across them
(data parallel), so the global batch, the schedule and the loss curve are those of one process. Only
the main process writes checkpoints; every process reads them back on resume.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lorafair.models import precision as prec
from lorafair.study.config import Arm, TrainingConfig
from lorafair.arms.bank import load_trainable_state, trainable_state
from lorafair.training.checkpoint import load_checkpoint, save_checkpoint
from lorafair.training.encoding import completion_loss, make_batch, packing_works
from lorafair.errors import UserError

# accelerate launches whose processes each hold a shard of the model or optimizer
SHARDED = {"FSDP", "DEEPSPEED", "MEGATRON_LM"}


class Diverged(Exception):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}")
        self.step = step
        self.loss = loss


@dataclass
class TrainResult:
    lr: float
    steps: int
    examples_seen: int
    log: list[dict] = field(default_factory=list)  # step, loss, lr, tokens_per_s
    val_curve: list[dict] = field(default_factory=list)  # step, val_loss
    best_val_loss: float = float("nan")
    final_val_loss: float = float("nan")
    stopped_early: bool = False
    best_step: int | None = None  # step of the best validation evaluation: the weights kept
    restored_best: bool = False  # the last evaluation was worse than the best; the best weights were restored
    tokens: int = 0
    wall_s: float = 0.0
    peak_mem_mb: float = 0.0
    packed: bool = False  # batches packed (training.packing, and the model keeps packed sequences apart)
    resumed_from: int = 0  # the checkpoint's step when the run continued a killed one
    processes: int = 1  # data-parallel processes that shared each batch
    precision: str = "float32"  # compute dtype (bfloat16: autocast, float32 master weights, frozen base in bf16)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("log", "val_curve")}


# ---------------------------------------------------------------- schedule


def schedule_order(n: int, batch_size: int, total_micro: int, seed: int) -> list[list[int]]:
    """Indices of each micro-batch, epoch after epoch, shuffled by (seed, epoch)."""
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total_micro:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        for i in range(0, n, batch_size):
            if len(batches) < total_micro:
                batches.append(perm[i:i + batch_size])
        epoch += 1
    return batches


def total_steps(cfg: TrainingConfig, n_train: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = math.ceil(n_train / cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def make_optimizer(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; the fused kernel where torch has one for these tensors (one pass over the parameters
    instead of about eight: the same update up to float rounding, several times faster on CPU)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(opt, cfg: TrainingConfig, steps: int):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    warm = int(round(cfg.warmup_ratio * steps))
    if cfg.schedule == "cosine":
        return get_cosine_schedule_with_warmup(opt, warm, steps)
    if cfg.schedule == "linear":
        return get_linear_schedule_with_warmup(opt, warm, steps)
    return get_constant_schedule_with_warmup(opt, warm)


@torch.no_grad()
def validation_loss(model: nn.Module, val: list[dict], pad_id: int, batch_size: int, autocast=None,
                    packing: bool = False, acc=None) -> float:
    """Token-weighted mean completion loss over the validation examples. With an accelerator of
    several processes each process scores every n-th batch and the sums are added up."""
    if not val:
        return float("nan")
    was = model.training
    model.eval()
    rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
    total, count = 0.0, 0
    for i in range(rank * batch_size, len(val), batch_size * world):
        b = make_batch(val[i:i + batch_size], pad_id, packing, _device(model))
        with _autocast(autocast):
            total += completion_loss(model, b, reduction="sum").item()
        count += int((b["labels"][:, 1:] != -100).sum())
    model.train(was)
    if world > 1:
        total, count = acc.reduce(torch.tensor([total, count], dtype=torch.float64), "sum").tolist()
    return total / max(count, 1)


def targets(items: list[dict]) -> int:
    """Completion tokens the batch predicts (its loss is their mean)."""
    return sum(sum(1 for t in x["labels"][1:] if t != -100) for x in items)


def step_loss(model: nn.Module, items: list[dict], pad_id: int, packing: bool, acc) -> torch.Tensor:
    """This process's part of one micro-batch's loss. One process: the mean over the batch's
    completion tokens, as always. N processes (data parallel): process r takes items r, r+N, ...
    and returns its summed loss x N / (the whole batch's completion tokens), so that the gradients
    averaged across processes are those of the whole batch's mean."""
    if acc.num_processes == 1:
        return completion_loss(model, make_batch(items, pad_id, packing, _device(model)))
    mine = items[acc.process_index::acc.num_processes]
    # a process with no example of its own still joins the gradient exchange, with a zero loss
    b = make_batch(mine or items[:1], pad_id, packing, _device(model))
    loss = completion_loss(model, b, reduction="sum", whole=True)
    return loss * (acc.num_processes / max(targets(items), 1) if mine else 0.0)


def _device(model: nn.Module) -> torch.device:
    """Where the model's weights are: its batches go there (a GPU when the model was put on one)."""
    return next(model.parameters()).device


def _autocast(dtype):
    return prec.compute(dtype)


def peak_mem_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the loop


def train(
    model: nn.Module,
    arm: Arm,
    train_rows: list[dict],
    val_rows: list[dict],
    cfg: TrainingConfig,
    seed: int,
    lr: float,
    pad_id: int,
    checkpoint: Path | None = None,
    steps: int | None = None,
    on_step: Callable[[dict], None] | None = None,
    autocast: torch.dtype | None = None,
    stop_after: int | None = None,
    keep_best: bool = True,
    checkpoint_key: str = "",
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train `model` (already wrapped for `arm`) in place; `train_rows`/`val_rows` are encoded.

    ``autocast``: the compute dtype (None or float32: plain float32). bfloat16: the model's frozen
    parameters (a LoRA arm's base) are cast to bf16 in place, trained ones stay float32 with their
    optimizer state, and every forward and backward runs under autocast; the loss is float32.

    ``steps`` is the length of the schedule (warm-up and decay); ``stop_after`` ends the run after
    that many of its steps (the learning-rate search: a prefix of the final run's schedule), with a
    validation evaluation at the last step run. With ``keep_best`` (and validation rows) the model
    handed back holds the weights of the best validation evaluation. A checkpoint in `checkpoint` is
    resumed only when it was written under the same `checkpoint_key` (the arm's hash and learning
    rate); any other is discarded, with a line to `log`."""
    steps = steps if steps is not None else total_steps(cfg, len(train_rows))
    run_steps = min(steps, stop_after) if stop_after is not None else steps
    order = schedule_order(len(train_rows), cfg.batch_size, run_steps * cfg.grad_accum, seed)
    bare = model
    model, params, opt, sched, acc, res = _prepare(model, train_rows, order, cfg, lr, steps, run_steps, pad_id,
                                                   autocast)
    best_state, bad_evals, start = None, 0, 0
    torch.manual_seed(seed)
    ck = load_checkpoint(checkpoint, checkpoint_key, log) if checkpoint is not None else None
    if ck is not None:
        start, best_state, bad_evals = _resume(ck, bare, opt, sched, res)
    model.train()
    t_start = time.perf_counter() - res.wall_s
    for step in range(start, run_steps):
        micro = [[train_rows[i] for i in order[step * cfg.grad_accum + j]] for j in range(cfg.grad_accum)]
        row = _optimizer_step(model, acc, micro, pad_id, res.packed, autocast, params, cfg, opt, sched, step, res)
        last = step + 1 == run_steps
        if val_rows and ((step + 1) % cfg.eval_every == 0 or last):  # no validation split: no evaluation
            v = validation_loss(bare, val_rows, pad_id, cfg.batch_size, autocast, res.packed, acc)
            best_state, bad_evals = _record_validation(v, step, last, row, res, cfg, bare, keep_best,
                                                       best_state, bad_evals)
        if on_step:
            on_step(row)
        res.wall_s = time.perf_counter() - t_start
        if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0) and not last and not res.stopped_early:
            _checkpoint(acc, checkpoint, checkpoint_key, bare, opt, sched, step, res, best_state, bad_evals)
        if res.stopped_early:
            res.steps = step + 1
            res.examples_seen = sum(len(b) for b in order[: (step + 1) * cfg.grad_accum])
            break
    _keep_best(res, bare, best_state if keep_best else None)
    res.wall_s = time.perf_counter() - t_start
    res.peak_mem_mb = peak_mem_mb()
    bare.eval()
    return res


def _prepare(model: nn.Module, train_rows: list[dict], order: list[list[int]], cfg: TrainingConfig, lr: float,
             steps: int, run_steps: int, pad_id: int, autocast: torch.dtype | None = None):
    """The optimizer, the schedule of ``steps`` and the accelerate wrapper of one run, with the
    frozen parameters cast to the compute dtype; returns (wrapped model, trainable parameters,
    wrapped optimizer, scheduler, accelerator, the result record with ``packed``, ``processes``
    and ``precision`` set)."""
    from accelerate import Accelerator

    res = TrainResult(lr=lr, steps=run_steps, examples_seen=sum(len(b) for b in order),
                      precision=prec.name(autocast))
    # two sequences show whether the model keeps packed sequences apart (checked in float32: a
    # property of the model, not of the precision); more only cost time
    res.packed = cfg.packing and packing_works(model, [train_rows[i] for i in order[0][:2]], pad_id)
    prec.for_training(model, autocast)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr, cfg.weight_decay)
    sched = make_scheduler(opt, cfg, steps)
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, device_placement=False,
                      cpu=not torch.cuda.is_available())  # cpu: processes on CPU talk over gloo
    refuse_sharded(acc)
    model, opt = acc.prepare(model, opt)  # the scheduler stays ours: one step per optimizer step
    res.processes = acc.num_processes
    return model, params, opt, sched, acc, res


def refuse_sharded(acc) -> None:
    """One line instead of a run when accelerate shards the model (FSDP, DeepSpeed): lorafair's
    checkpoints and saved weights assume every process holds them whole, as under DDP."""
    kind = str(getattr(acc.distributed_type, "value", acc.distributed_type))
    if kind in SHARDED:
        raise UserError(f"training under {kind}: lorafair trains one arm data-parallel (DDP) only, since its "
                        "checkpoints and saved weights are whole on every process; launch without --use_fsdp / "
                        "--use_deepspeed (torchrun or plain accelerate launch)")


def _optimizer_step(model: nn.Module, acc, micro: list[list[dict]], pad_id: int, packing: bool,
                    autocast: torch.dtype | None, params: list, cfg: TrainingConfig, opt, sched, step: int,
                    res: TrainResult) -> dict:
    """One optimizer step over its micro-batches; its log row (appended to ``res.log``) is returned.
    Diverged when the loss is not finite."""
    t0 = time.perf_counter()
    loss_sum, ntok = _accumulate(model, acc, micro, pad_id, packing, autocast)
    if not math.isfinite(loss_sum):
        raise Diverged(step + 1, loss_sum)
    acc.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    res.tokens += ntok
    row = {"step": step + 1, "loss": loss_sum, "lr": sched.get_last_lr()[0], "tokens_per_s": ntok / dt}
    res.log.append(row)
    return row


def _checkpoint(acc, folder: Path, key: str, bare: nn.Module, opt, sched, step: int, res: TrainResult,
                best_state: dict | None, bad_evals: int) -> None:
    """The main process writes the checkpoint after ``step``; every process waits for it."""
    if acc.is_main_process:
        save_checkpoint(folder, key, bare, opt.optimizer, sched, step + 1, res, best_state, bad_evals)
    acc.wait_for_everyone()


def _resume(ck: dict, bare: nn.Module, opt, sched, res: TrainResult) -> tuple[int, dict | None, int]:
    """Restore a checkpoint's weights, optimizer, schedule, random state and records into ``res``;
    returns (step to start from, best weights so far, evaluations without improvement)."""
    load_trainable_state(bare, ck["params"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["rng"])
    res.log, res.val_curve, res.tokens = ck["log"], ck["val_curve"], ck["tokens"]
    res.resumed_from = ck["step"]
    res.wall_s = ck["wall_s"]
    return ck["step"], ck["best_state"], ck["bad_evals"]


def _accumulate(model: nn.Module, acc, micro: list[list[dict]], pad_id: int, packing: bool,
                autocast: torch.dtype | None) -> tuple[float, int]:
    """Gradients of one optimizer step over its micro-batches; returns (mean loss, tokens seen)."""
    loss_sum, ntok = 0.0, 0
    for items in micro:
        with acc.accumulate(model):
            with _autocast(autocast):
                loss = step_loss(model, items, pad_id, packing, acc)
            acc.backward(loss)  # divided by grad_accum, as the mean over the step's micro-batches
        part = loss.detach() if acc.num_processes == 1 else acc.reduce(loss.detach(), "mean")
        loss_sum += part.item() / len(micro)
        ntok += sum(len(x["input_ids"]) for x in items)
    return loss_sum, ntok


def _record_validation(v: float, step: int, last: bool, row: dict, res: TrainResult, cfg: TrainingConfig,
                       bare: nn.Module, keep_best: bool, best_state: dict | None, bad_evals: int
                       ) -> tuple[dict | None, int]:
    """Record one validation loss; returns (best weights so far, evaluations without improvement)
    and marks ``res.stopped_early`` once the patience runs out. Diverged on a non-finite loss."""
    if not math.isfinite(v):
        raise Diverged(step + 1, v)
    prev_best = min((r["val_loss"] for r in res.val_curve), default=float("inf"))
    res.val_curve.append({"step": step + 1, "val_loss": v})
    row["val_loss"] = v
    if v < prev_best:
        bad_evals = 0
        if keep_best and not last:  # the last evaluation's weights are the model's own
            best_state = trainable_state(bare)
    else:
        bad_evals += 1
    if cfg.early_stopping_patience is not None and bad_evals >= cfg.early_stopping_patience:
        res.stopped_early = True
    return best_state, bad_evals


def _keep_best(res: TrainResult, bare: nn.Module, best_state: dict | None) -> None:
    """Best and final validation losses into ``res``; the best weights restored when they beat the last."""
    vals = [r["val_loss"] for r in res.val_curve]
    res.best_val_loss = min(vals) if vals else float("nan")
    res.final_val_loss = vals[-1] if vals else float("nan")
    if vals:
        res.best_step = res.val_curve[vals.index(res.best_val_loss)]["step"]
        if res.best_val_loss < vals[-1] and best_state is not None:
            load_trainable_state(bare, best_state)
            res.restored_best = True
