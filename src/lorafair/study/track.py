"""The study's tracker (``tracking:`` none | tensorboard | mlflow) seen from a session: one tracked
run per arm × seed of training, and a run named ``decisions`` with the final decisions. The writing
itself is ``lorafair.training.tracking``'s."""

from __future__ import annotations

import torch

from lorafair.arms import kinds
from lorafair.store import rundir as store
from lorafair.study.config import Arm
from lorafair.study.session import Session


def params(session: Session) -> dict:
    """What every tracked run records: the study's hash and the precision training ran in."""
    f = session.rd.study_path("json")
    h = store.read_json(f).get("hash") if f.is_file() else None
    return {"study": session.study.name, "study_hash": h,
            "precision": str(session.ctx.autocast or torch.float32).removeprefix("torch.")}


def tracker(session: Session, arm: Arm, seed: int, lr: float):
    """The study's tracker of one training (None with ``tracking: none``)."""
    from lorafair.training.tracking import open_tracker

    p = {**params(session), "arm": arm.name, "seed": seed, "lr": lr, "rank": arm.rank,
         "variant": arm.variant if kinds.is_lora(arm) else kinds.weights_kind(arm)}
    return open_tracker(session.study.tracking, session.rd.path, session.study.name, arm.name, seed, p)


def decisions(session: Session) -> None:
    """The decisions table into the study's tracker, as a run named ``decisions``."""
    from lorafair.store.tables import decisions_table
    from lorafair.training.tracking import log_decisions

    rd = session.rd
    if session.study.tracking.backend != "none" and rd.compare_path().is_file():
        table = decisions_table(store.read_json(rd.compare_path()))
        log_decisions(session.study.tracking, rd.path, session.study.name, table, params(session))
