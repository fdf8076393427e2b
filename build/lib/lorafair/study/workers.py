"""Entry points of processes other than the one running a study: one arm trained by a multi-process
launch (torchrun / accelerate), and the runner a worker process keeps for the jobs it is sent."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from lorafair.store import rundir as store
from lorafair.study.config import Study, resolved_dict
from lorafair.study.context import Context, select_arms
from lorafair.errors import UserError
from lorafair.study.runner import Runner


def train_arm(study: Study, arm_name: str, seed: int, force: bool, log: Callable[[str], None]) -> None:
    """Train one arm x seed of `study`. Launched by torchrun or accelerate on N processes, every
    process runs this; the training is data parallel (see lorafair.training.loop.train) and only the main
    process writes. The corpus is built by the main process first and read back by the others."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    r = Runner(study, log=log if state.is_main_process else (lambda m: None))
    arm = select_arms(r.arms, [arm_name])[0]
    if arm.type == "base":
        raise UserError("--arm base: the base model is not trained; name a full or LoRA arm")
    if seed not in study.seeds:
        raise UserError(f"--seed {seed}: not one of the study's seeds {study.seeds}")
    r.main = state.is_main_process
    r.ctx = Context(study, r.log)
    with _main_holds_lock(state, r.rd):
        _train_locked(state, r, study, arm, arm_name, seed, force)


def _main_holds_lock(state, rd: store.RunDir) -> contextlib.ExitStack:
    """The run folder's lock, held by the main process for the whole training (the others write
    nothing). When it is taken, every process raises the same one-line error instead of waiting."""
    held, err = contextlib.ExitStack(), None
    if state.is_main_process:
        try:
            held.enter_context(rd.lock())
        except UserError as e:
            err = str(e)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        err = broadcast_object_list([err])[0]
    if err is not None:
        held.close()
        raise UserError(err)
    return held


def _train_locked(state, r: Runner, study: Study, arm, arm_name: str, seed: int, force: bool) -> None:
    with state.main_process_first():
        if r.main:
            from lorafair.study.preflight import preflight

            preflight(study, [arm_name], analyses=False)
            r.rd.check_writable()
            r.rd.write_study(resolved_dict(study))
        r.splits, r.corpus_hash = r.corpus()
    h = r.arm_hash(arm, seed)
    if not force and r.rd.is_done(arm.name, seed, h):
        r.log(f"{arm.name} seed {seed}: finished earlier, skipped (--force retrains)")
        return
    if force and r.main:
        r.rd.clear_arm(arm.name, seed)
    state.wait_for_everyone()
    lr, search = r.choose_lr(arm, *r.encoded)
    r.train_one(arm, seed, lr, search, *r.encoded, h)
    state.wait_for_everyone()


_WORKER: dict = {}


def worker_runner(study: Study) -> Runner:
    """The runner of a worker process that carries out jobs of `study`: built on the first job
    (tokenizer loaded, corpus read back from the run directory) and kept for the next ones."""
    key = (store.content_hash(resolved_dict(study)), study.output)
    if key not in _WORKER:
        _WORKER.clear()
        r = Runner(study, log=lambda m: print(m, flush=True))
        r.ctx = Context(study, r.log)
        r.splits, r.corpus_hash = r.corpus()
        _WORKER[key] = r
    return _WORKER[key]
