"""The table of jobs: each kind of `Job` (lorafair.study.execute) and the function of a session
that carries it out, and the session's executor built over them."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from lorafair.study import evaluate, train
from lorafair.study.execute import Job, make_executor
from lorafair.study.session import Session

JOBS: dict[str, Callable[..., Any]] = {
    "search": train.search_job,  # (arm name) -> the chosen learning rate
    "train": train.train_job,  # (arm name, seed)
    "evaluate": evaluate.evaluate_job,  # ((arm, seed), ...), bank arms -> results
}


def run_job(session: Session, job: Job) -> Any:
    """Carry out one job of the study in this process."""
    return JOBS[job.kind](session, *job.args)


def with_executor(session: Session, remote: Callable[[Any, Job], Any] | None = None) -> Session:
    """The session with its executor: jobs run on this session (local backend) or, on Ray, through
    `remote(study, job)` in a worker process."""
    study = dataclasses.replace(session.study, output=str(session.rd.path.resolve()))
    holder: list[Session] = []
    ex = make_executor(study, lambda job: run_job(holder[0], job), session.log, remote)
    holder.append(dataclasses.replace(session, executor=ex))
    return holder[0]
