"""Command line: parse arguments, call the library, print. Bad input: one line on stderr, exit 2."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from lorafair.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Does a low-rank fine-tune capture the shift its data asks for?")
console = Console(stderr=True)
out = Console(soft_wrap=True)



def _fail(e: UserError) -> None:
    console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _os_error(e: OSError) -> UserError:
    """A full disk, a read-only or vanished folder: one line naming the file and what to do."""
    where = e.filename or "output"
    return UserError(f"{where}: {e.strerror or e}; free space or fix the folder's permissions, then run the same "
                     "command again (finished work is kept)")


def quiet_libraries() -> None:
    """Keep library progress bars ("Loading weights") and advisory warnings (FutureWarning) out of
    the console; lorafair prints its own progress. Errors still show."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # bars libraries draw with tqdm directly (GGUF conversion)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|torch|huggingface_hub)")
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()


def command(name: str | None = None):
    """Register a command; a UserError (or an error of the file system) it raises ends in one line on
    stderr and exit code 2; Ctrl-C in one line and exit code 130."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            quiet_libraries()
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                _fail(e)
            except OSError as e:
                _fail(_os_error(e))
            except KeyboardInterrupt:
                console.print("interrupted; run the same command to resume", highlight=False)
                raise typer.Exit(130) from None

        return app.command(name)(wrapper)

    return deco


def _progress():
    """A rich progress bar per arm: step, loss, tokens/s."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    def factory(arm: str, seed: int):
        bar = Progress(TextColumn(f"{arm} seed {seed}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:.0f} tok/s"),
                       TimeRemainingColumn(), console=console, transient=True)
        task = None

        def on_step(row: dict):
            nonlocal task
            if task is None:
                bar.start()
                task = bar.add_task("train", total=None, loss=row["loss"], tps=row["tokens_per_s"])
            bar.update(task, completed=row["step"], loss=row["loss"], tps=row["tokens_per_s"])

        on_step.close = bar.stop
        return on_step

    return factory


def _run(path: Path, arms: list[str] | None, force: bool, analyses: bool, report: bool,
         execution: dict | None = None, until_decided: bool = False) -> None:
    from lorafair.study.config import load_study, validate_execution
    from lorafair.study.runner import Runner, run_study
    from lorafair.report.summary import print_summary

    study = load_study(path)
    for key, value in (execution or {}).items():
        if value is not None:
            setattr(study.execution, key, value)
    validate_execution(study.execution, "command line")
    log = lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    if until_decided:
        if arms or force:
            raise UserError("--until-decided plans every arm of the study itself; leave out "
                            f"{'--arms' if arms else '--force'}")
        print_summary(Runner(study, log=log, progress=_progress()).run_until_decided(analyses, report).path, out)
        return
    print_summary(run_study(study, arms, force, analyses, report, progress=_progress(), log=log), out)


@command()
def run(study: Path, arms: Optional[list[str]] = typer.Option(None, "--arms", help="only these arms"),
        force: bool = typer.Option(False, "--force", help="retrain finished arms"),
        no_analyses: bool = typer.Option(False, "--no-analyses", help="skip KL, Logit Lens and weight analyses"),
        no_report: bool = typer.Option(False, "--no-report"),
        backend: Optional[str] = typer.Option(None, "--backend", help="local or ray (default: the study's execution)"),
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join: auto or host:port"),
        num_cpus: Optional[float] = typer.Option(None, "--num-cpus", help="CPUs per job (ray)"),
        num_gpus: Optional[float] = typer.Option(None, "--num-gpus", help="GPUs per job (ray)"),
        until_decided: bool = typer.Option(False, "--until-decided",
                                           help="add training seeds where a decision is open "
                                                "(evaluation.sequential), with error rates that hold over looks")):
    """Train every arm of STUDY and evaluate it."""
    _run(study, arms, force, not no_analyses, not no_report,
         {"backend": backend, "address": address, "num_cpus": num_cpus, "num_gpus": num_gpus}, until_decided)


@command()
def train(study: Path, arm: str = typer.Option(..., "--arm", help="the arm to train, e.g. full or lora-r8"),
          seed: int = typer.Option(0, "--seed"),
          force: bool = typer.Option(False, "--force", help="retrain if finished")):
    """Train one arm x seed of STUDY. Launched by `torchrun --nproc_per_node N` (or accelerate
    launch), it trains data-parallel on N processes; `lorafair run` then evaluates it."""
    from lorafair.study.config import load_study
    from lorafair.study.workers import train_arm

    train_arm(load_study(study), arm, seed, force, log=lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True))


@command()
def demo(force: bool = typer.Option(False, "--force")):
    """Run the shipped demo study on the packaged default model."""
    _run(Path("demo"), None, force, True, True)


@command()
def validate(study: Path):
    """Check a study file without running it."""
    from lorafair.study.config import load_study
    from lorafair.study.preflight import preflight

    s = load_study(study)
    plan = preflight(s)
    for w in plan.warnings:
        console.print(f"warning: {w}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"{study}: valid; task {s.task.name}, model {s.model.source}, {len(plan.arms)} arms "
              f"({', '.join(a.name for a in plan.arms)}), seeds {s.seeds}, output {plan.output}", markup=False)


@command("models")
def models_cmd(prepare: Optional[list[str]] = typer.Option(None, "--prepare", help="convert these packaged models")):
    """List model sources and whether each is converted in the cache."""
    from lorafair.models import sources as models

    for name in prepare or []:
        if name not in models.PACKAGED:
            raise UserError(f"--prepare: model {name!r} is not packaged; packaged models: {', '.join(models.PACKAGED)}")
    for name in prepare or []:
        console.print(f"preparing {name} ...")
        models.prepare(name)
    for name, p in models.PACKAGED.items():
        state = "cached" if models.is_cached(name) else "not converted"
        out.print(f"{name:14s} {state:14s} {p.description}  [{p.pip}]", markup=False)
    out.print(f"{models.TINY:14s} {'built':14s} random 2-layer model from the default config (tests)")
    out.print("any Hugging Face id or local folder (needs the network or a local copy)")
    out.print(f"cache: {models.cache_dir()}")


@command()
def score(texts: list[str], scorer: str = typer.Option("jigsaw-bilstm", "--scorer")):
    """Print per-label toxicity scores of TEXTS as JSON."""
    from lorafair.scorers import get_scorer

    if not texts or not all(t.strip() for t in texts):
        raise UserError("score: a text is empty; give one or more non-empty texts, e.g. lorafair score \"some text\"")
    s = get_scorer(scorer)
    res = s.score(texts)
    rows = [{"text": t, **{k: round(float(v[i]), 4) for k, v in res.items()}} for i, t in enumerate(texts)]
    out.print_json(json.dumps({"scorer": s.info(), "scores": rows}))


@command("audit-scorer")
def audit_scorer(name: str, out_file: Optional[Path] = typer.Option(None, "--out", help="also write the JSON here"),
                 threshold: float = typer.Option(0.5, "--threshold", help="score counted as toxic"),
                 n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap replicates and permutations")):
    """Audit scorer NAME: agreement with Perspective, false positives per identity group (JSON, cached)."""
    from lorafair.store import rundir as store
    from lorafair.scorers import audit, get_scorer

    if not 0 < threshold < 1:
        raise UserError(f"--threshold {threshold}: give a score strictly between 0 and 1")
    scorer = get_scorer(name)
    result = audit.audit(scorer, threshold, n_boot)
    path = audit.cache_path(scorer.info(), threshold)
    for p in [path] + ([out_file] if out_file else []):
        store.write_json(p, result)
    print_audit(result)
    out.print(f"written: {', '.join(str(p) for p in [path] + ([out_file] if out_file else []))}")


def print_audit(result: dict) -> None:
    from lorafair.report.audit import audit_summary

    for line in audit_summary(result):
        out.print(line, markup=False)


@command("tasks")
def tasks_cmd():
    """List the registered tasks (lorafair's and other packages') and their study options."""
    import inspect

    from rich.table import Table

    from lorafair.tasks import discover, options_table

    for name, cls in sorted(discover().items()):
        doc = inspect.cleandoc(cls.__doc__ or inspect.getmodule(cls).__doc__ or "").split("\n\n")[0]
        doc = doc.replace("\n", " ")
        t = Table(title=f"{name}: {doc}", title_justify="left")
        for col in ("key", "default", "accepts"):
            t.add_column(col, overflow="fold")
        for row in options_table(cls):
            t.add_row(*row)
        out.print(t)


@command()
def analyze(run_dir: Path):
    """Run the shift analyses (KL, Logit Lens, weights) on a finished study."""
    from lorafair.study.config import load_study
    from lorafair.study.runner import Runner

    from lorafair.study.sequential import with_planned_seeds

    study = with_planned_seeds(_study_of(run_dir, load_study))  # every seed run until decided added
    _say_missing(run_dir)
    runner = Runner(study, log=lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True))
    runner.analyze_finished()


@command()
def report(run_dir: Path):
    """Write report.html, summary.md and plots for a run directory."""
    from lorafair.api import load_run

    run = load_run(run_dir)  # a UserError when it is not a run directory
    _say_missing(run_dir)
    out.print(f"report: {run.report()}")  # the decisions and metrics tables are rebuilt with it


@command()
def export(run_dir: Path, dest: Path, force: bool = typer.Option(False, "--force", help="replace DEST")):
    """Copy RUN_DIR's result files, never its weights, to DEST (e.g. results/<study>) to commit them."""
    from lorafair.store.export import export as export_run

    files = export_run(run_dir, dest, force=force)
    out.print(f"exported {len(files)} result files to {dest}; rebuild the report with: lorafair report {dest}")


@command()
def compare(run_dirs: list[Path], out_dir: Path = typer.Option(Path("runs/compare"), "--out")):
    """Set several studies side by side."""
    from lorafair.report import build_comparison

    if len(run_dirs) < 2:
        raise UserError(f"compare: {len(run_dirs)} run folder given; give two or more to set side by side, e.g. "
                        "lorafair compare runs/a runs/b")
    out.print(f"comparison: {build_comparison(run_dirs, out_dir)}")


def _say_missing(run_dir: Path) -> None:
    from lorafair.report.summary import missing_arms

    missing = missing_arms(run_dir) if run_dir.is_dir() else []
    if missing:
        console.print(f"warning: {run_dir}: not evaluated yet or damaged, left out or out of date: "
                      f"{', '.join(missing)}; run `lorafair run` on the study again to finish or redo them",
                      highlight=False, markup=False, soft_wrap=True)


def _study_of(run_dir: Path, load_study):
    from lorafair.store.rundir import RunDir

    f = RunDir(run_dir).study_path()
    if not f.is_file():
        raise UserError(f"{run_dir}: not a run directory (no study.yaml); give the output folder of a study")
    study = load_study(f)
    study.output = str(run_dir)
    return study


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
