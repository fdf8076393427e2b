"""The training stage: learning-rate searches (one job per arm that needs one), then trainings (one
job per arm x seed not finished with the same key), through the session's executor. The jobs
themselves (:func:`search_job`, :func:`train_job`) run wherever the executor sends them."""

from __future__ import annotations

import dataclasses
import math
import os
import socket

from lorafair.arms import kinds
from lorafair.arms.bank import save_final, wrap_for_training
from lorafair.errors import UserError
from lorafair.store import keys
from lorafair.study import track
from lorafair.study.config import Arm
from lorafair.study.execute import Job, raise_failures
from lorafair.study.session import Request, Session
from lorafair.training.loop import Diverged, total_steps, train
from lorafair.training.lr_search import bracket, lr_grid


def train_all(session: Session, request: Request) -> None:
    rd, study, arms, force = session.rd, session.study, request.arms, request.force
    todo = []
    for arm in arms:
        if not kinds.trains(arm):
            continue
        for seed in study.seeds:
            if not force and rd.is_done(arm.name, seed, session.train_key(arm, seed)):
                session.log(f"{arm.name} seed {seed}: finished earlier, skipped (--force retrains)")
                continue
            if force:
                rd.clear_arm(arm.name, seed)
            todo.append((arm, seed))
    session.tally.work += len(todo)
    searching = list({a.name: a for a, _ in todo if needs_search(session, a)}.values())
    ex = session.executor
    failures = ex.run([Job(f"learning-rate search {a.name}", "search", (a.name,)) for a in searching])
    failed = {f.job.args[0] for f in failures}
    failures += ex.run([Job(f"train {a.name} seed {s}", "train", (a.name, s)) for a, s in todo if a.name not in failed])
    raise_failures("train", failures, session.log, session.rd.path)


def search_job(session: Session, arm_name: str) -> float:
    return choose_lr(session, session.arm(arm_name))[0]


def train_job(session: Session, arm_name: str, seed: int) -> None:
    arm = session.arm(arm_name)
    h = session.train_key(arm, seed)
    if session.rd.is_done(arm.name, seed, h):  # an earlier attempt of this job finished it
        return
    lr, search = choose_lr(session, arm)
    train_one(session, arm, seed, lr, search, h)


def fresh_model(session: Session, arm: Arm, seed: int):
    return wrap_for_training(session.ctx.load_base(), arm, seed)


def needs_search(session: Session, arm: Arm) -> bool:
    """Whether the arm's learning rate comes from a search not yet recorded for this key."""
    if arm.lr is not None or not session.study.training.lr_search.enabled:
        return False
    cached = session.rd.read_lr_search(arm.name)
    return not (cached and cached.get("key") == session.search_key(arm))


def choose_lr(session: Session, arm: Arm) -> tuple[float, dict | None]:
    """The arm's learning rate: fixed by hand, or the best of a short search on validation loss."""
    study, rd, log = session.study, session.rd, session.log
    t, s = study.training, study.training.lr_search
    default = kinds.default_lr(arm, t.lr_full, t.lr_lora)
    if arm.lr is not None:
        return arm.lr, {"fixed": arm.lr}
    if not s.enabled:
        return default, {"fixed": default, "reason": "lr_search disabled"}
    key = session.search_key(arm)
    cached = rd.read_lr_search(arm.name)
    if cached and cached.get("key") == key:
        return cached["chosen"], cached
    enc_train, enc_val = session.encoded
    if not enc_val:
        raise UserError("data.val_fraction: no validation examples, and the learning-rate search ranks rates by "
                        "validation loss; raise data.val_fraction or set training.lr_search.enabled: false")
    seed = study.seeds[0]
    schedule = total_steps(t, len(enc_train))
    steps = min(s.steps, schedule)

    def run(lr: float) -> float | None:
        model = fresh_model(session, arm, seed)
        try:
            loss = train(model, arm, enc_train, enc_val, t, seed, lr, session.ctx.tokenizer.pad_token_id,
                         steps=schedule, stop_after=steps, keep_best=False,
                         autocast=session.ctx.autocast).final_val_loss
        except Diverged as e:
            log(f"{arm.name}: lr {lr:g} diverged at step {e.step}")
            return None
        log(f"{arm.name}: lr {lr:g} -> val loss {loss:.4f} after {steps} of {schedule} steps")
        return loss if math.isfinite(loss) else None

    try:
        found = bracket(lr_grid(arm, s), run, s.max_extensions, log)
    except UserError as e:
        raise UserError(f"arm {arm.name}: {e}") from None
    for row in found["candidates"]:
        row["steps"] = steps
    record = {"key": key, "arm": arm.name, **found, "seed": seed, "steps": steps, "schedule_steps": schedule,
              "max_extensions": s.max_extensions,
              "criterion": f"validation loss after the first {steps} of the final run's {schedule} steps "
                           "(same warm-up, decay, seed and example order)"}
    if not found["interior"]:
        log(f"{arm.name}: the best rate {found['chosen']:g} is still at an edge after "
            f"{s.max_extensions} grid extensions")
    if session.main:
        rd.write_lr_search(arm.name, record)
    return found["chosen"], record


def train_one(session: Session, arm: Arm, seed: int, lr: float, search, h: str) -> None:
    """Train one arm x seed at `lr` (`h`: its train key) and, in the main process, write its weights,
    log and done marker."""
    study, rd, log = session.study, session.rd, session.log
    enc_train, enc_val = session.encoded
    model = fresh_model(session, arm, seed)
    if session.main:
        rd.write_arm_config(arm.name, seed, {"arm": arm.to_dict(), "seed": seed, "lr": lr, "hash": h,
                                             "training": dataclasses.asdict(study.training)})
    on_step = session.progress(arm.name, seed) if session.progress else None
    tracker = track.tracker(session, arm, seed, lr) if session.main else None
    hooks = [f for f in (on_step, tracker.log_step if tracker else None) if f is not None]
    finished = False
    try:
        res = train(model, arm, enc_train, enc_val, study.training, seed, lr,
                    session.ctx.tokenizer.pad_token_id, checkpoint=rd.checkpoint_dir(arm.name, seed),
                    on_step=(lambda row: [f(row) for f in hooks]) if hooks else None, autocast=session.ctx.autocast,
                    checkpoint_key=keys.checkpoint_key(h, lr), log=log)
        finished = True
    except Diverged as e:
        if session.main:
            rd.write_failed(arm.name, seed, {"step": e.step, "loss": str(e.loss), "lr": lr})
        log(f"{arm.name} seed {seed}: STOPPED, loss became {e.loss} at step {e.step}; other arms go on")
        return
    finally:
        if on_step is not None and hasattr(on_step, "close"):
            on_step.close()
        if tracker is not None:
            tracker.close(finished)
    if not session.main:  # another process of a multi-process launch: the main one writes
        return
    rd.save_weights(arm.name, seed, lambda p: save_final(model, arm, p), kinds.weights_kind(arm))
    rd.write_train_log(arm.name, seed, res.log, res.val_curve)
    # where it ran: the host, and the GPUs a scheduler (Ray, Slurm) made visible to this process
    where = {"host": socket.gethostname(), "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}
    rd.mark_done(arm.name, seed, {"hash": h, "lr_search": search, "model_hash": session.model_hash,
                                  **where, **res.summary()})
    log(f"{arm.name} seed {seed}: {res.steps} steps, lr {lr:g}, final loss {res.log[-1]['loss']:.4f}, "
        f"best val {res.best_val_loss:.4f} at step {res.best_step}"
        f"{' (weights restored to it)' if res.restored_best else ''}, {res.tokens / max(res.wall_s, 1e-9):.0f} tok/s, "
        f"{res.wall_s:.0f}s, peak {res.peak_mem_mb:.0f} MB")
