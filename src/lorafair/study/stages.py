"""The table of stages: every stage of a run with the study key that turns it on, the function that
runs it, what it takes from earlier stages, what it writes and the cache key its results are filed
under. The runner, the pre-flight, ``lorafair analyze`` and the report loader all read this table.

Functions are named as ``"module:function"`` and imported only when a stage runs (:func:`resolve`),
so that the report can read the table without importing the training code. A stage's function is
``fn(session, request, **inputs)`` (inputs: the results of the stages it names; the corpus reaches
later stages as ``session.corpus``, the rest through the run directory); an analysis's is
``fn(inputs)`` with the shared `lorafair.study.analyses.Inputs`. Analyses (``part_of="analyses"``)
run inside the ``analyses`` stage, in table order, each also name a plot (``report.plots``) and a
loader (``report.load``), and may add a ``figure`` (file, caption) the report draws generically.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    name: str
    flag: str | None  # the study key that turns it on (dotted path into the study); None: always on
    fn: str  # "module:function"
    inputs: tuple[str, ...] = ()  # the earlier stages whose results it takes, as keyword arguments
    after: tuple[str, ...] = ()  # the earlier stages whose files (or session fields) it reads
    outputs: tuple[str, ...] = ()  # what it writes, relative to the run directory
    key: str | None = None  # its cache key, a function of lorafair.store.keys; None: not cached
    part_of: str | None = None  # "analyses": run by the analyses stage (the shift analyses)
    plot: str | None = None  # "module:function" the report draws it with
    load: str | None = None  # "module:function" the report reads it with: (RunDir) -> data or None
    needs_heldout: bool = False  # needs held-out (or validation) examples of the corpus
    figure: tuple[str, str] | None = None  # (file, caption) of a figure the report draws from plot(data)


STAGES: tuple[Stage, ...] = (
    Stage("corpus", None, "lorafair.study.corpus:build", outputs=("data/<corpus>-<key>.jsonl",), key="corpus_key"),
    Stage("train", None, "lorafair.study.train:train_all", after=("corpus",),
          outputs=("lr_search/<arm>.json", "<arm>/seed-<s>/{adapter,model,done.json,train_log.jsonl}"),
          key="train_key"),
    Stage("evaluate", None, "lorafair.study.evaluate:evaluate_all", after=("train",),
          outputs=("<arm>/seed-<s>/eval/<task>.{json,parquet}",), key="evaluation_key"),
    Stage("counterfactual", "evaluation.counterfactual.enabled", "lorafair.study.counterfactual:run", after=("train",),
          outputs=("<arm>/seed-<s>/eval/counterfactual.{json,parquet}", "analysis/counterfactual.json"),
          key="counterfactual_key", plot="lorafair.report.plots:lens_heatmap",
          load="lorafair.report.load:read_counterfactual"),
    Stage("compare", None, "lorafair.study.evaluate:compare", inputs=("evaluate",), outputs=("compare.json",)),
    Stage("scorer_audit", "evaluation.audit_scorer", "lorafair.study.evaluate:audit_scorers", after=("evaluate",),
          outputs=("scorer_audit.json",)),
    Stage("analyses", None, "lorafair.study.analyses:run", after=("corpus", "train"),
          outputs=("analysis/timings.json",)),
    Stage("kl", "analyses.kl", "lorafair.study.analyses:kl", outputs=("analysis/kl.json", "analysis/kl_sequences.parquet",
                                                               "analysis/kl_tokens.parquet"),
          part_of="analyses", plot="lorafair.report.plots:shift_vs_rank", load="lorafair.report.load:read_kl",
          needs_heldout=True),
    Stage("lens", "analyses.lens", "lorafair.study.analyses:lens",
          outputs=("analysis/lens.json", "analysis/lens.parquet", "analysis/toxic_tokens.json"), part_of="analyses",
          plot="lorafair.report.plots:lens_heatmap", load="lorafair.report.load:read_lens", needs_heldout=True),
    Stage("weights", "analyses.weights", "lorafair.study.analyses:weights", after=("kl",),
          outputs=("analysis/weights.json", "analysis/weights.parquet"), part_of="analyses",
          plot="lorafair.report.plots:spectrum_energy", load="lorafair.report.load:read_weights"),
    Stage("report", None, "lorafair.study.publish:build", after=("compare",),
          outputs=("report/report.html", "report/summary.md")),
)

# what the command line turns off: --no-analyses, --no-report
OPTIONAL = {"analyses": "analyses", "report": "report"}


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def steps() -> list[Stage]:
    """The stages the runner runs, in order (the analyses run inside their stage)."""
    return [s for s in STAGES if s.part_of is None]


def analyses() -> list[Stage]:
    return [s for s in STAGES if s.part_of == "analyses"]


def with_results() -> list[Stage]:
    """The stages whose results the report reads through a loader of their own."""
    return [s for s in STAGES if s.load is not None]


def flag_value(study: Any, flag: str | None) -> bool:
    """The study's value of a stage's flag (True when it has none)."""
    if flag is None:
        return True
    value = study
    for part in flag.split("."):
        value = getattr(value, part)
    return bool(value)


def is_on(s: Stage, study: Any, analyses: bool = True, report: bool = True) -> bool:
    """Whether stage `s` runs for `study` (`analyses`, `report`: what the command asked for)."""
    asked = {"analyses": analyses, "report": report}
    group = s.part_of or s.name
    if group in OPTIONAL and not asked[OPTIONAL[group]]:
        return False
    return flag_value(study, s.flag)


def resolve(ref: str) -> Callable:
    """The function a ``"module:function"`` reference names."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
