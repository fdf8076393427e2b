"""lorafair: does a low-rank fine-tune capture the shift its data asks for?

The public Python API (documented in docs/python-api.md); importing lorafair loads nothing heavy,
each function imports what it needs when called::

    import lorafair
    study = lorafair.load_study("studies/demo.yaml")   # a path, a shipped study's name or a dict
    run = lorafair.run(study, arms=None, force=False)  # -> lorafair.Run
    run = lorafair.load_run("results/findings-detox")
    run.decisions(); run.metrics(); run.items(); run.training(); run.report()
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from lorafair.api import Run
    from lorafair.study.config import Study

__version__ = "0.1.0"
__all__ = ["Run", "load_run", "load_study", "run", "__version__"]


def load_study(study: "str | Path | dict | Study") -> "Study":
    """A validated study from a YAML path, a shipped study's name, a dict of sections or a Study."""
    from lorafair import api

    return api.load_study(study)


def run(study: "str | Path | dict | Study", arms: list[str] | None = None, force: bool = False, *,
        analyses: bool = True, report: bool = True, log: Callable[[str], None] = print) -> "Run":
    """Run a study as ``lorafair run`` does (finished arms are kept) and return its :class:`Run`."""
    from lorafair import api

    return api.run(study, arms, force, analyses=analyses, report=report, log=log)


def load_run(path: str | Path) -> "Run":
    """The results of a run directory or an exported copy (``results/<study>``) as a :class:`Run`."""
    from lorafair import api

    return api.load_run(path)


def __getattr__(name: str):
    if name == "Run":
        from lorafair.api import Run

        return Run
    raise AttributeError(f"module 'lorafair' has no attribute {name!r}")
