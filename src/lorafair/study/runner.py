"""Runs a study, stage after stage, as the table of stages (lorafair.study.stages) lists them; each
stage reads what the earlier ones wrote:

corpus (cached by key) -> learning-rate search per arm (cached) -> train each arm x seed (skipped
when finished with the same key; resumes from its checkpoint) -> evaluate every arm with the base
loaded once and adapters swapped in -> counterfactual divergence -> compare arms -> scorer audit ->
analyses -> report.

The runner holds no stage logic: it builds the session (lorafair.study.session), runs each stage
that is on as a plain function of the session, and records each stage's wall time.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from lorafair.errors import UserError
from lorafair.store import rundir as store
from lorafair.study import corpus, stages
from lorafair.study.config import Study, expand_arms, resolved_dict
from lorafair.study.context import Context, make_task
from lorafair.study.jobs import with_executor
from lorafair.study.preflight import preflight
from lorafair.study.session import Request, Session, open_session, output_path
from lorafair.study.workers import run_remote
from lorafair.store.rundir import RunDir

REUSABLE = ("corpus", "train", "evaluate")  # stages whose time an earlier run's results stand for


class Runner:
    def __init__(self, study: Study, log: Callable[[str], None] = print, progress=None):
        self.study = study
        self.arms = expand_arms(study)
        self.rd = RunDir(output_path(study))
        self.log = log
        self.progress = progress
        self.task = make_task(study)
        self.timings: dict[str, float] = {}
        self.reused: list[str] = []  # stages that found all their work done by an earlier run
        self.session: Session | None = None  # built when the run starts

    @property
    def ctx(self) -> Context:
        return self._session().ctx

    @property
    def corpus_hash(self) -> str:
        return self._session().corpus_hash

    def _session(self) -> Session:
        if self.session is None:
            raise RuntimeError("the runner has not run yet: call run() or analyze_finished() first")
        return self.session

    def run(self, only: list[str] | None = None, force: bool = False, analyses: bool = True,
            report: bool = True) -> dict[tuple[str, int], pd.DataFrame]:
        """Every stage that is on, for the arms of `only` (all when None); returns the evaluation's
        results (arm, seed) -> rows."""
        plan = preflight(self.study, only, analyses)  # every check before anything is written: fail now, not after hours
        for w in plan.warnings:
            self.log(f"warning: {w}")
        self.session = open_session(self.study, self.log, self.progress, task=self.task)
        created = not self.rd.path.exists()
        self.rd.check_writable()
        with self.rd.lock():
            try:
                for p in self.rd.remove_leftovers():
                    self.log(f"removed {p}, left by an interrupted run")
                return self._run_locked(Request(plan.arms, force, analyses, report))
            except (UserError, OSError):
                if created and not self.rd.finished_arms():  # nothing worth keeping: leave no folder behind
                    self.rd.remove()
                raise

    def _run_locked(self, request: Request):
        timings = self.rd.timings_path()
        earlier = store.read_json(timings) if timings.is_file() else {}
        self.rd.write_study(resolved_dict(self.study))
        results: dict[str, Any] = {}
        for s in stages.steps():
            if not stages.is_on(s, self.study, request.analyses, request.report):
                continue
            if s.name == "report":  # timings first: the report shows them
                store.write_json(timings, {**self.timings, "from_earlier_run": self.reused})
            session = self._session()
            results[s.name] = self._timed(s.name, earlier, lambda: stages.resolve(s.fn)(
                session, request, **{i: results[i] for i in s.inputs}))
            if s.name == "corpus":
                self.session = with_executor(dataclasses.replace(session, corpus=results["corpus"]), run_remote)
        if not request.report:
            store.write_json(timings, {**self.timings, "from_earlier_run": self.reused})
        return results["evaluate"]

    def _timed(self, name: str, earlier: dict, fn):
        """Run one stage and record its wall time; a stage that only found earlier results keeps the
        earlier run's time and is listed as from an earlier run."""
        tally = self._session().tally
        t, work = time.perf_counter(), tally.work
        out = fn()
        self.timings[name] = round(time.perf_counter() - t, 2)
        if tally.work == work and name in REUSABLE and name in earlier:
            self.timings[name] = earlier[name]
            self.reused.append(name)
        return out

    def run_until_decided(self, analyses: bool = True, report: bool = True) -> RunDir:
        """``run --until-decided``: the study look after look (lorafair.study.sequential), each look's
        stages run by a runner of the study with that look's seeds."""
        from lorafair.study import sequential

        def run_stages(study: Study, only: list[str] | None) -> None:
            Runner(study, self.log, self.progress).run(only=only, analyses=False, report=False)

        def analyze(study: Study) -> None:
            Runner(study, self.log).analyze_finished()

        return sequential.run_until_decided(self.study, run_stages, analyze, self.log, analyses, report)

    def analyze_finished(self) -> dict:
        """The analyses alone, on the run directory of a finished study (``lorafair analyze``)."""
        session = open_session(self.study, self.log, task=self.task)
        with self.rd.lock():
            self.session = dataclasses.replace(session, corpus=corpus.build(session))
            return stages.resolve(stages.stage("analyses").fn)(self.session, Request(self.arms))


def run_study(study: Study, only: list[str] | None = None, force: bool = False, analyses: bool = True,
              report: bool = True, log: Callable[[str], None] = print, progress=None) -> Path:
    """Run ``study`` (train, evaluate, compare, analyse, report; finished work is kept) and return
    its run directory: what ``lorafair run`` and ``lorafair.run`` both call."""
    runner = Runner(study, log=log, progress=progress)
    runner.run(only=only, force=force, analyses=analyses, report=report)
    return runner.rd.path


__all__ = ["Runner", "run_study"]
