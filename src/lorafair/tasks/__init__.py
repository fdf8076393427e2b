"""Tasks: what the shift is and how it is measured. Every task looks the same:

- `Options` (the study's `task:` section) and `DataOptions` (its `data:` section), strict dataclasses;
- `build_corpus(ctx)` -> fine-tuning rows {prompt, completion, ...}, cached by the runner by hash;
- `evaluate(ctx, model, arm)` -> `results.EvalResult` (metric records, groups, gaps, warnings, rows);
- `compare(ctx, rows)` -> `results.CompareResult`: ``pooled`` (arm -> metric -> record, seeds
  pooled) and ``minus_full`` (arm -> metric -> paired difference record, crossed-design intervals);
- `MARGINS` / `default_margins()` -> equivalence margin δ of every headline metric;
- `kl_prompts(ctx)` -> evaluation prompts on which the token-posterior KL is also measured;
- `evaluation_items(study)` / `finetune_items(study)` (and `evaluation_templates(study)`) -> what
  is evaluated and what the corpus is built from, as text, so that `lorafair.study.overlap` can refuse a
  study whose evaluation overlaps its fine-tuning data before anything is trained.

Adding a task is one folder ``tasks/<name>/`` whose package registers a `Task` subclass with
`@register("name")`, plus a study file; the runner, the report and the CLI never change. Tasks are
found by scanning this package's folders and the entry-point group ``lorafair.tasks`` (another
package adds a task by declaring ``[project.entry-points."lorafair.tasks"] name = "pkg.module"``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lorafair.study.schema import key
from lorafair.errors import UserError
from lorafair.stats.results import CompareResult, EvalResult

TASKS: dict[str, type["Task"]] = {}


def register(name: str):
    def deco(cls):
        if name in TASKS:
            raise RuntimeError(f"task {name!r} registered twice")
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


ENTRY_POINTS = "lorafair.tasks"


def discover() -> dict[str, type["Task"]]:
    """Import every task: the folders of this package, then the modules other packages declare in
    the entry-point group ``lorafair.tasks``; each registers itself. Returns the registry."""
    import importlib
    import importlib.metadata
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if ep.name not in TASKS:
            ep.load()
    return TASKS


def get_task(name: str) -> type["Task"]:
    if name not in TASKS:
        discover()
    if name not in TASKS:
        raise UserError(f"task.name: unknown task {name!r}; valid: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def options_table(cls: type["Task"]) -> list[tuple[str, str, str]]:
    """(study key, default, accepted values) of every option of task class ``cls``: its
    ``task.options`` and ``data`` sections."""
    import dataclasses

    rows = []
    for section, schema in (("task.options", cls.Options), ("data", cls.DataOptions)):
        if not dataclasses.is_dataclass(schema):
            continue
        for f in dataclasses.fields(schema):
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = repr(f.default_factory())
            else:
                default = "(required)"
            meta = f.metadata or {}
            accepts = (meta["bounds"].describe() if meta.get("bounds") else
                       "one of " + ", ".join(map(str, meta["one_of"])) if meta.get("one_of") else "")
            rows.append((f"{section}.{f.name}", default, accepts))
    return rows


def report_hook(name: str):
    """The report-figure function of task ``name`` (``Task.report_hook``), or None: no such task
    registered, or it draws no figures of its own."""
    import importlib

    try:
        spec = get_task(name).report_hook
    except UserError:
        return None
    if not spec:
        return None
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


@dataclass
class CorpusOptions:
    """Common to every task's `data:` section: how the fine-tuning corpus is split."""

    val_fraction: float = key(0.15, "[0, 1)")  # validation split: learning-rate search, early stopping, fit evidence
    heldout_fraction: float = key(0.15, "[0, 1)")  # kept out of training and validation: token-posterior KL


class Task(ABC):
    name: str = ""
    Options: type = dict
    DataOptions: type = CorpusOptions
    MARGINS: dict[str, float] = {}  # equivalence margin per headline metric (or name prefix)
    # the primary metrics (names or prefixes): the headline decisions, Holm-adjusted together, and the
    # rank recommendation; every other metric is secondary (`evaluation.primary` overrides)
    PRIMARY: tuple[str, ...] = ()

    def __init__(self, options: Any, data: Any):
        self.options = options
        self.data = data
        if data.val_fraction + data.heldout_fraction >= 1:
            raise UserError(f"data.val_fraction + data.heldout_fraction is {data.val_fraction + data.heldout_fraction:g}, "
                            "which leaves no training examples; keep their sum below 1")

    @abstractmethod
    def build_corpus(self, ctx) -> list[dict]: ...

    @abstractmethod
    def evaluate(self, ctx, model, arm: str) -> EvalResult: ...

    uses_scorer = False  # whether evaluation scores text with evaluation.scorer
    # "module:function" drawing the task's own report figures: (run, task) -> (section, figures)
    report_hook: str | None = None

    def check(self, study) -> list[dict] | None:
        """Open and check every file and data set the options name, before anything is written or
        trained. Returns the fine-tuning rows when they can be read now (a user's file), so that their
        number can be checked against what training and the analyses need; None when the corpus is
        generated by a model."""
        return None

    @abstractmethod
    def evaluation_items(self, study) -> list[str]:
        """What evaluation scores, as text (prompts, profiles, environment streams)."""

    @abstractmethod
    def finetune_items(self, study) -> list[str]:
        """What the fine-tuning corpus (train, validation and held out) is built from, as text;
        known without a model, so the overlap check runs before any generation or training."""

    def evaluation_templates(self, study) -> list[str]:
        """Templates (one ``{person}`` slot) the evaluation prompts are made from; none by default."""
        return []

    def disjoint_hint(self) -> str:
        """What to change when `lorafair.study.overlap` finds evaluation items in the fine-tuning data."""
        return "make the evaluation set and the fine-tuning corpus disjoint"

    def check_study(self, study) -> None:
        """Checks across sections of the study (the task's own options are checked when built);
        raises UserError before anything is written."""

    def generate_many(self, ctx, bank, names: list[str]) -> dict[str, list]:
        """Generations of several arms of `bank` at once, passed back to `evaluate` as `generated`;
        {} for tasks that do not generate."""
        return {}

    def compare(self, ctx, results: dict[tuple[str, int], pd.DataFrame]) -> CompareResult:
        return CompareResult(pooled={})

    def kl_prompts(self, ctx) -> list[str]:
        return []

    def competence(self, results: dict[tuple[str, int], pd.DataFrame], pooled: dict[str, dict]
                   ) -> dict[str, str]:
        """The task's part of the fit gate (``stats.fit``): arm -> why it did not learn the task at
        all (e.g. a constant policy), for the arms that fail; {} when every arm passes or the task
        has no such check. ``results``: (arm, seed) -> evaluation rows; ``pooled``: compare.json's."""
        return {}

    def seed_competence(self, results: dict[tuple[str, int], pd.DataFrame]) -> dict[tuple[str, int], str]:
        """The same check seed by seed, for every trained arm (full included): (arm, seed) -> why that
        seed's model did not learn the task (short), for the seeds that fail; {} when none fails or the
        task has no such check. The fit gate reports them beside the arm's verdict (``stats.fit``)."""
        return {}

    def default_margins(self) -> dict[str, float]:
        """Equivalence margin δ per headline metric (or metric-name prefix); the study's
        ``evaluation.margins`` override these."""
        return dict(self.MARGINS)

    def corpus_key(self) -> dict:
        """What determines the corpus and the evaluation set (hashed for the caches): the options,
        and the content of every file an option names, so an edited file is a new corpus."""
        import dataclasses
        from pathlib import Path

        from lorafair.store.rundir import file_hash

        opts = {"options": dataclasses.asdict(self.options), "data": dataclasses.asdict(self.data)}
        files = {f"{section}.{k}": file_hash(Path(v).expanduser()) for section, d in opts.items() for k, v in d.items()
                 if isinstance(v, str) and v and Path(v).expanduser().is_file()}
        return {"task": self.name, **opts, "files": files}
