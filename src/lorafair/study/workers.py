"""Entry points of processes other than the one running a study: one arm trained by a multi-process
launch (torchrun / accelerate), and the session a Ray worker process keeps for the jobs it is sent."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch

from lorafair.arms import kinds
from lorafair.errors import UserError
from lorafair.store import rundir as store
from lorafair.study import corpus, train
from lorafair.study.config import Study, resolved_dict
from lorafair.study.context import select_arms
from lorafair.study.execute import Job
from lorafair.study.jobs import run_job
from lorafair.study.preflight import preflight
from lorafair.study.session import Session, open_session


def train_arm(study: Study, arm_name: str, seed: int, force: bool, log: Callable[[str], None]) -> None:
    """Train one arm x seed of `study`. Launched by torchrun or accelerate on N processes, every
    process runs this; the training is data parallel (see lorafair.training.loop.train) and only the main
    process writes. The corpus is built by the main process first and read back by the others."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    session = open_session(study, log if state.is_main_process else (lambda m: None), main=state.is_main_process)
    arm = select_arms(session.arms, [arm_name])[0]
    if not kinds.trains(arm):
        raise UserError("--arm base: the base model is not trained; name a full or LoRA arm")
    if seed not in study.seeds:
        raise UserError(f"--seed {seed}: not one of the study's seeds {study.seeds}")
    with _main_holds_lock(state, session.rd):
        _train_locked(state, session, arm, seed, force)


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


def _train_locked(state, session: Session, arm, seed: int, force: bool) -> None:
    study, rd = session.study, session.rd
    with state.main_process_first():
        if session.main:
            preflight(study, [arm.name], analyses=False)
            rd.check_writable()
            rd.write_study(resolved_dict(study))
        session = dataclasses.replace(session, corpus=corpus.build(session))
    h = session.train_key(arm, seed)
    if not force and rd.is_done(arm.name, seed, h):
        session.log(f"{arm.name} seed {seed}: finished earlier, skipped (--force retrains)")
        return
    if force and session.main:
        rd.clear_arm(arm.name, seed)
    state.wait_for_everyone()
    lr, search = train.choose_lr(session, arm)
    train.train_one(session, arm, seed, lr, search, h)
    state.wait_for_everyone()


_WORKER: dict = {}


def worker_session(study: Study) -> Session:
    """The session of a worker process that carries out jobs of `study`: built on the first job
    (tokenizer loaded, corpus read back from the run directory) and kept for the next ones."""
    key = (store.content_hash(resolved_dict(study)), study.output)
    if key not in _WORKER:
        _WORKER.clear()
        session = open_session(study, lambda m: print(m, flush=True))
        _WORKER[key] = dataclasses.replace(session, corpus=corpus.build(session))
    return _WORKER[key]


def run_remote(study: Study, job: Job):
    """The body of a Ray task: the worker's session for `study` carries out `job`."""
    return run_job(worker_session(study), job)
