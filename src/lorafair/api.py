"""The Python API behind ``import lorafair``: load a study, run it, and read a run's results as tidy
pandas tables (columns documented in :mod:`lorafair.store.tables`).

    import lorafair
    run = lorafair.run("studies/demo.yaml")          # or lorafair.load_run("results/findings-detox")
    run.decisions()                                   # one row per arm × metric
    run.metrics(), run.items(), run.training()        # per seed, per item, per step
    run.report()                                      # report.html; returns its path

``lorafair run`` on the command line goes through the same :func:`lorafair.study.runner.run_study`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pandas as pd

from lorafair.errors import UserError


def load_study(study):
    """A validated study (:class:`lorafair.study.config.Study`) from a YAML file's path, the name of
    a shipped study (``"demo"``), a dict with the study file's sections, or a study itself.
    Raises :class:`lorafair.errors.UserError` (one line: what, where, what to do) when invalid."""
    from lorafair.study.config import Study, load_study as load_file, study_from_dict

    if isinstance(study, Study):
        return study
    if isinstance(study, dict):
        return study_from_dict(study)
    if isinstance(study, (str, Path)):
        return load_file(study)
    raise UserError(f"load_study: got a {type(study).__name__}; give a study file's path, a shipped study's "
                    "name or a dict of its sections")


class Run:
    """One run directory's results (read when first asked for; finished runs, exported copies in
    ``results/`` and runs still going are all read the same way)."""

    def __init__(self, path: str | Path):
        from lorafair.report.load import is_run_dir

        self.path = Path(path)
        if not is_run_dir(self.path):
            raise UserError(f"{self.path}: not a run directory (no study.yaml or study.json); give the output "
                            "folder of a study run")
        self._loaded = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def _run(self):
        from lorafair.report.load import load_run

        if self._loaded is None:
            self._loaded = load_run(self.path)
        return self._loaded

    @property
    def name(self) -> str:
        """The study's name."""
        return self._run.name

    @property
    def study(self) -> dict:
        """The resolved study as written into the run (a dict of its sections)."""
        return self._run.study

    @property
    def study_hash(self) -> str | None:
        return self._run.study_hash

    @property
    def task(self) -> str | None:
        """The study's task name (``toxicity``, ``classification``, ``lending``, ...)."""
        return self._run.task

    @property
    def arms(self) -> list[str]:
        """The arms with results, base first, LoRA by rank, full last."""
        return self._run.arms

    def reload(self) -> "Run":
        """Read the files again (a run that was still going)."""
        self._loaded = None
        return self

    def decisions(self) -> pd.DataFrame:
        """One row per arm × metric: the arm's value, arm − full with its 90% and 95% intervals, the
        margin δ, the decision, whether the arm fitted and whether the metric is primary."""
        from lorafair.store.tables import decisions_table

        return decisions_table(self._run.compare)

    def metrics(self) -> pd.DataFrame:
        """One row per task × arm × seed × metric (overall, per group and group gaps)."""
        from lorafair.store.tables import metrics_table

        return metrics_table(self._run.evals)

    def items(self, task: str | None = None) -> pd.DataFrame:
        """One row per evaluated item of ``task`` (default: the study's task; ``"probes"`` for the
        bias probes): arm, seed, then the task's columns (prompt, continuation, scores, group, ...)."""
        from lorafair.store.rundir import RunDir
        from lorafair.store.tables import items_table

        task = task or self.task
        names = sorted(self._run.evals)
        if task not in names:
            raise UserError(f"items: this run has no evaluation {task!r}; evaluations: {', '.join(names) or 'none'}")
        rd, rows = RunDir(self.path), {}
        for arm, seed in self._run.evals[task]:
            got = rd.read_eval(arm, seed, task)
            if got is not None:
                rows[(arm, seed)] = got[1]
        return _with_prompts(items_table(rows), self.path)

    def training(self) -> pd.DataFrame:
        """One row per arm × seed × logged step: training loss, validation loss, learning rate."""
        from lorafair.store.tables import training_table

        r = self._run
        return training_table({k: df.to_dict("records") for k, df in r.train_logs.items()},
                              {k: df.to_dict("records") for k, df in r.val_curves.items()})

    def report(self, path: str | Path | None = None) -> Path:
        """Write the report (``<run>/report/``: report.html, summary.md, plots) and return the HTML's
        path; with ``path``, the report folder is copied there too and the copy's HTML returned."""
        from lorafair.report import build_report
        from lorafair.store.rundir import RunDir

        rd = RunDir(self.path)
        with rd.lock():
            rd.write_tables()
            html = build_report(self.path)
        if path is None:
            return html
        dest = Path(path)
        shutil.copytree(html.parent, dest, dirs_exist_ok=True)
        return dest / html.name


def _with_prompts(items: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Rows of a run written before per-item rows carried the prompt's text: the text joined from
    the task's evaluation prompts (``prompt_id``), when the task can list them without a model."""
    if "prompt" in items.columns or "prompt_id" not in items.columns:
        return items
    from types import SimpleNamespace

    from lorafair.store.rundir import RunDir
    from lorafair.study.config import study_from_dict
    from lorafair.study.context import make_task

    try:
        raw = yaml_dict(RunDir(run_dir).study_path())
        raw.pop("output", None)
        study = study_from_dict(raw, str(RunDir(run_dir).study_path()))
        prompts = make_task(study).eval_prompts(SimpleNamespace(study=study))
    except (UserError, AttributeError, OSError, KeyError):
        return items
    text = {r["id"]: r["prompt"] for r in prompts}
    at = list(items.columns).index("prompt_id") + 1
    items.insert(at, "prompt", items["prompt_id"].map(text).astype("string"))
    return items


def yaml_dict(path: Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def load_run(path: str | Path) -> Run:
    """The results of a run directory (a study's ``output``, or an exported copy in ``results/``)."""
    return Run(path)


def run(study, arms: list[str] | None = None, force: bool = False, *, analyses: bool = True,
        report: bool = True, log: Callable[[str], None] = print) -> Run:
    """Run a study (path, shipped name, dict or :class:`Study`): train the arms not finished, evaluate,
    compare, analyse and report, as ``lorafair run`` does; ``arms`` limits it to some arms, ``force``
    retrains finished ones. Returns the :class:`Run` of its output folder."""
    from lorafair.study.runner import run_study

    return Run(run_study(load_study(study), arms, force, analyses, report, log=log))


__all__ = ["Run", "load_run", "load_study", "run"]
