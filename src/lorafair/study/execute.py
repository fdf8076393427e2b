"""Where a study's jobs run. A job is one independent, idempotent piece of a stage (the learning-rate
search of an arm, the training of an arm x seed, the evaluation of a group of arms) that reads its
inputs from the run directory and writes its results there; the run directory is the single source
of truth, so a job that ran twice, or on another machine, leaves the same files.

Two backends: ``local`` runs the jobs one after another in this process (the default); ``ray``
submits each as a Ray task with its own CPUs and GPUs, on this machine or a running cluster. Ray is
imported only when that backend is used. Both collect failures instead of stopping: the other jobs
of the stage go on, and the caller decides what a failure means.
"""

from __future__ import annotations

import errno
import os
import re
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from lorafair.study.config import ExecutionConfig
from lorafair.errors import UserError


@dataclass(frozen=True)
class Job:
    """One unit of work: `kind` names its function in the table of jobs (lorafair.study.jobs), `args`
    its arguments after the session (picklable)."""

    name: str  # shown in progress lines and failure reports, e.g. "train full seed 0"
    kind: str  # search | train | evaluate
    args: tuple = ()


@dataclass
class Failure:
    job: Job
    error: str  # one line
    detail: str = ""  # traceback, when there is one

    @property
    def user_error(self) -> bool:
        return self.detail == ""


ENVIRONMENT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def environment_cause(e: BaseException) -> str | None:
    """One line for a failure of the machine rather than of lorafair or the study (a full disk, a
    read-only or forbidden folder), found in `e` or its causes; libraries that write files (safetensors,
    torch) report these as their own errors carrying the OS's message or number."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = e.errno if isinstance(e, OSError) else None
        if code is None:
            m = re.search(r"\(os error (\d+)\)", str(e))
            code = int(m.group(1)) if m else None
        if code is None and "No space left on device" in str(e):
            code = errno.ENOSPC
        if code in ENVIRONMENT_ERRORS:
            where = getattr(e, "filename", None) or "the output folder"
            return (f"{where}: {os.strerror(code)}; free space or fix the folder's permissions, then run the same "
                    "command again (finished work is kept)")
        e = e.__cause__ or e.__context__
    return None


def _describe(e: BaseException) -> Failure:
    if isinstance(e, UserError):
        return Failure(Job("", ""), str(e))
    cause = environment_cause(e)  # a full disk, a read-only folder: not a bug
    if cause is not None:
        return Failure(Job("", ""), cause)
    return Failure(Job("", ""), f"{type(e).__name__}: {e}", "".join(traceback.format_exception(e)))


class LocalExecutor:
    """Jobs one after another in this process, with the session's own state (models, progress bars);
    what each job returned is kept in `values`."""

    name = "local"

    def __init__(self, call: Callable[[Job], Any], log: Callable[[str], None]):
        self.call = call
        self.log = log
        self.values: dict[Job, Any] = {}

    def run(self, jobs: list[Job]) -> list[Failure]:
        failures = []
        for i, job in enumerate(jobs, 1):
            t = time.perf_counter()
            try:
                self.values[job] = self.call(job)
            except Exception as e:  # noqa: BLE001 - collected, reported by the caller
                f = _describe(e)
                failures.append(Failure(job, f.error, f.detail))
                self.log(f"[{i}/{len(jobs)}] {job.name}: FAILED ({f.error}); the other jobs go on")
                continue
            if len(jobs) > 1:
                self.log(f"[{i}/{len(jobs)}] {job.name}: done in {time.perf_counter() - t:.0f}s")
        return failures


class RayExecutor:
    """Each job a Ray task with `num_cpus`/`num_gpus` of the cluster. A task whose worker process
    died is retried once (Ray's own retry); an exception raised by the job is not retried."""

    name = "ray"

    def __init__(self, study, cfg: ExecutionConfig, log: Callable[[str], None], remote: Callable[[Any, Job], Any]):
        try:
            import ray
        except ImportError:
            raise UserError("execution.backend: ray is not installed; pip install 'lorafair[ray]' "
                            "or use the local backend") from None
        self.ray = ray
        self.study = study
        self.cfg = cfg
        self.log = log
        if not ray.is_initialized():
            # without Ray's dashboard agent (not installed by the ray extra) metrics have nowhere to go
            os.environ.setdefault("RAY_enable_metrics_collection", "0")
            t = time.perf_counter()
            try:
                ray.init(address=cfg.address, include_dashboard=False, log_to_driver=True)
            except ConnectionError as e:
                raise UserError(f"execution.address: cannot join the Ray cluster at {cfg.address!r} ({e}); "
                                "start it with `ray start --head` or fix the address") from None
            self.log(f"ray: connected in {time.perf_counter() - t:.1f}s, resources {ray.cluster_resources()}")
        self.task = ray.remote(max_retries=1, retry_exceptions=False)(remote)

    def run(self, jobs: list[Job]) -> list[Failure]:
        ray = self.ray
        opts = {"num_cpus": self.cfg.num_cpus, "num_gpus": self.cfg.num_gpus}
        refs = {self.task.options(name=job.name, **opts).remote(self.study, job): (job, time.perf_counter())
                for job in jobs}
        pending, failures, n = list(refs), [], 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            job, t = refs[ready[0]]
            n += 1
            try:
                ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                f = _describe(e.cause if e.cause is not None else e)
                failures.append(Failure(job, f.error, f.detail or str(e)))
            except ray.exceptions.RayError as e:  # the worker died twice, the node went away
                failures.append(Failure(job, f"{type(e).__name__}: {str(e).splitlines()[0]}", str(e)))
            if failures and failures[-1].job is job:
                self.log(f"[{n}/{len(jobs)}] {job.name}: FAILED ({failures[-1].error}); the other jobs go on")
            else:
                self.log(f"[{n}/{len(jobs)}] {job.name}: done {time.perf_counter() - t:.0f}s after submission")
        return failures


def make_executor(study, call: Callable[[Job], Any], log: Callable[[str], None],
                  remote: Callable[[Any, Job], Any] | None = None):
    """call(job): carries a job out in this process; remote(study, job): the body of a Ray task,
    a module-level function (lorafair.study.workers.run_remote)."""
    if study.execution.backend == "ray":
        if remote is None:
            raise ValueError("the ray backend needs the function its tasks run")
        return RayExecutor(study, study.execution, log, remote)
    return LocalExecutor(call, log)


def raise_failures(stage: str, failures: list[Failure], log: Callable[[str], None], folder=None) -> None:
    """End the stage with one error naming every failed job, after the others finished (`folder`:
    the run folder, named with its free space where a job found no space left)."""
    if not failures:
        return
    for f in failures:
        if f.detail:
            log(f"{f.job.name}: {f.detail.rstrip()}")
    if folder is not None:
        import shutil

        try:
            free = f"{folder} ({shutil.disk_usage(folder).free / 2**20:.0f} MB free there now)"
        except OSError:
            free = str(folder)
        failures = [Failure(f.job, f.error.replace("the output folder", free, 1), f.detail) for f in failures]
    names = "; ".join(f"{f.job.name}: {f.error}" for f in failures)
    msg = (f"{stage}: {len(failures)} job(s) failed ({names}); the finished ones are kept and skipped when "
           "the study runs again")
    if all(f.user_error for f in failures):
        raise UserError(msg)
    raise JobsFailed(msg)


class JobsFailed(RuntimeError):
    """Jobs of a stage failed for a reason other than the study's input (their tracebacks are logged)."""
