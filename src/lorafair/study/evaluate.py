"""The evaluation stage: which finished arms need evaluating, the evaluation itself with the base
model loaded once and adapters swapped in, the comparison of arms with its equivalence decisions,
and the audit of the scorers the evaluations used."""

from __future__ import annotations

import time

import pandas as pd

from lorafair.arms import kinds
from lorafair.arms.names import bank_name
from lorafair.store import rundir as store
from lorafair.study import track
from lorafair.study.config import Arm
from lorafair.study.decide import decide_run
from lorafair.study.execute import Job, raise_failures
from lorafair.study.session import Request, Session

Results = dict[tuple[str, int], pd.DataFrame]


def status(session: Session, arms: list[Arm], force: bool) -> tuple[Results, list[tuple[Arm, int, str]]]:
    """(results read back from earlier evaluations, [(arm, seed, key)] still to evaluate)."""
    results, pending = {}, []
    for arm, seed in session.trained(arms):
        h = session.eval_key(arm, seed)
        cached = session.rd.read_eval(arm.name, seed, session.task.name)
        if cached is not None and cached[0].get("hash") == h and not force:
            results[(arm.name, seed)] = cached[1]
        else:
            pending.append((arm, seed, h))
    return results, pending


def evaluate_all(session: Session, request: Request) -> Results:
    """Evaluate every finished arm x seed not evaluated with the same settings. Locally one job
    evaluates them all (base and LoRA arms share batches); on Ray, arms that run as models of their
    own (full fine-tuning) are jobs of their own and the rest one job."""
    arms = request.arms
    results, pending = status(session, arms, request.force)
    session.tally.work += len(pending)
    if not pending:
        return results
    ex = session.executor
    if ex.name == "local":
        groups = [pending]
    else:
        groups = ([[p for p in pending if not kinds.own_process(p[0])]]
                  + [[p] for p in pending if kinds.own_process(p[0])])
    everyone = tuple(a.name for a in arms)
    jobs = [Job(f"evaluate {', '.join(f'{a.name}@{s}' for a, s, _ in g)}", "evaluate",
                (tuple((a.name, s) for a, s, _ in g), everyone if len(groups) == 1 else ()))
            for g in groups if g]
    raise_failures("evaluate", ex.run(jobs), session.log, session.rd.path)
    if ex.name == "local":
        return results | ex.values[jobs[0]]
    return status(session, arms, False)[0]


def evaluate_job(session: Session, names: tuple[tuple[str, int], ...], bank_arms: tuple[str, ...]) -> Results:
    """Evaluate these (arm, seed); the base carries the adapters of `bank_arms` (default: these)."""
    pending = [(session.arm(a), s, session.eval_key(session.arm(a), s)) for a, s in names]
    arms = [session.arm(a) for a in bank_arms] or list({a.name: a for a, _, _ in pending}.values())
    return evaluate_pending(session, pending, arms)


def evaluate_pending(session: Session, pending: list[tuple[Arm, int, str]], arms: list[Arm]) -> Results:
    """Evaluate these (arm, seed, key) with the base loaded once (carrying the finished adapters of
    `arms`) and write each one's results; the bank is kept in the session for the later stages."""
    results = {}
    bank = session.bank(arms) if pending else None
    # base and LoRA arms generate together, rows of every arm in each batch
    t = time.perf_counter()
    mix = []
    if bank is not None and session.study.evaluation.mix_arms:
        mix = bank.mixable([bank_name(a.name, s) for a, s, _ in pending])
    shared = session.task.generate_many(session.ctx, bank, mix) if mix else {}
    shared_s = (time.perf_counter() - t) / max(1, len(shared))
    if shared:
        session.log(f"generated for {len(shared)} arms together in {time.perf_counter() - t:.0f}s")
    for arm, seed, h in pending:
        results[(arm.name, seed)] = _evaluate_one(session, bank, arm, seed, h, shared, shared_s)
    session.slot.bank = bank
    return results


def _evaluate_one(session: Session, bank, arm: Arm, seed: int, h: str, shared: dict, shared_s: float) -> pd.DataFrame:
    """One arm and seed: the task's evaluation (and the probes), written with its key; returns its rows."""
    study, rd, ctx, task = session.study, session.rd, session.ctx, session.task
    t = time.perf_counter()
    name = bank_name(arm.name, seed)
    if kinds.own_process(arm):
        bank.add_full(session.load_full(seed))
    with bank.use(name) as model:
        kw = {"generated": shared[name]} if name in shared else {}
        res = task.evaluate(ctx, model, arm.name, **kw).check()
        if study.evaluation.probes:
            from lorafair.probes.run import evaluate_probes

            p_summary, p_rows = evaluate_probes(ctx, model, study.evaluation.probes)
            p_summary.update(hash=h, arm=arm.name, seed=seed)
            rd.write_eval(arm.name, seed, "probes", p_summary, p_rows)
    wall = time.perf_counter() - t + (shared_s if name in shared else 0.0)
    summary = {**res.summary(), "hash": h, "arm": arm.name, "seed": seed, "wall_s": round(wall, 2)}
    rd.write_eval(arm.name, seed, task.name, summary, res.rows)
    session.log(f"evaluated {arm.name} seed {seed} in {summary['wall_s']:.0f}s")
    return res.rows


def compare(session: Session, request: Request, evaluate: Results) -> dict:
    """The task's comparison of the evaluated arms (`evaluate`: the evaluation stage's results) with
    its equivalence decisions, written to compare.json."""
    res = session.task.compare(session.ctx, evaluate).check()
    out = decide_run(session.rd, session.study, session.task, res, evaluate)
    store.write_json(session.rd.compare_path(), out)
    session.rd.write_tables()  # decisions and metrics as tidy tables beside it
    track.decisions(session)
    return out


def audit_scorers(session: Session, request: Request | None = None) -> dict:
    """The audit of every scorer the evaluation summaries name (cached per scorer), copied into the run."""
    from lorafair.scorers.audit import cached_audits, scorer_infos

    infos = scorer_infos(session.rd.evals(session.task.name).values())
    if not infos:
        return {}
    out = cached_audits(infos, session.study.evaluation.threshold, session.log)
    store.write_json(session.rd.scorer_audit_path(), out)
    return out
