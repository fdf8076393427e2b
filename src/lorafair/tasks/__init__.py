"""Tasks: what the shift is and how it is measured. Every task looks the same:

- `Options` (the study's `task:` section) and `DataOptions` (its `data:` section), strict dataclasses;
- `build_corpus(ctx)` -> fine-tuning rows {prompt, completion, ...}, cached by the runner by hash;
- `evaluate(ctx, model, arm)` -> (summary dict of metric records, per-sample DataFrame);
- `compare(ctx, rows)` -> cross-arm results: ``pooled`` (arm -> metric -> record, seeds pooled)
  and ``minus_full`` (arm -> metric -> paired difference record, crossed-design intervals);
- `MARGINS` / `default_margins()` -> equivalence margin δ of every headline metric;
- `kl_prompts(ctx)` -> evaluation prompts on which the token-posterior KL is also measured.

Adding a task is one module with `@register("name")`; the runner never changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lorafair.errors import UserError

TASKS: dict[str, type["Task"]] = {}


def register(name: str):
    def deco(cls):
        if name in TASKS:
            raise RuntimeError(f"task {name!r} registered twice")
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


def get_task(name: str) -> type["Task"]:
    from lorafair.tasks import classification, lending, toxicity  # noqa: F401  (registers them)

    if name not in TASKS:
        raise UserError(f"task.name: unknown task {name!r}; valid: {', '.join(sorted(TASKS))}")
    return TASKS[name]


@dataclass
class CorpusOptions:
    """Common to every task's `data:` section: how the fine-tuning corpus is split."""

    val_fraction: float = 0.15  # validation split: learning-rate search, early stopping, fit evidence
    heldout_fraction: float = 0.15  # kept out of training and validation: token-posterior KL


class Task(ABC):
    name: str = ""
    Options: type = dict
    DataOptions: type = CorpusOptions
    MARGINS: dict[str, float] = {}  # equivalence margin per headline metric (or name prefix)

    def __init__(self, options: Any, data: Any):
        self.options = options
        self.data = data

    @abstractmethod
    def build_corpus(self, ctx) -> list[dict]: ...

    @abstractmethod
    def evaluate(self, ctx, model, arm: str) -> tuple[dict, pd.DataFrame]: ...

    def check_study(self, study) -> None:
        """Checks across sections of the study (the task's own options are checked when built);
        raises UserError before anything is written."""

    def generate_many(self, ctx, bank, names: list[str]) -> dict[str, list]:
        """Generations of several arms of `bank` at once, passed back to `evaluate` as `generated`;
        {} for tasks that do not generate."""
        return {}

    def compare(self, ctx, results: dict[tuple[str, int], pd.DataFrame]) -> dict:
        return {}

    def kl_prompts(self, ctx) -> list[str]:
        return []

    def default_margins(self) -> dict[str, float]:
        """Equivalence margin δ per headline metric (or metric-name prefix); the study's
        ``evaluation.margins`` override these."""
        return dict(self.MARGINS)

    def corpus_key(self) -> dict:
        """What determines the corpus (hashed for the cache)."""
        import dataclasses

        return {"task": self.name, "options": dataclasses.asdict(self.options), "data": dataclasses.asdict(self.data)}
