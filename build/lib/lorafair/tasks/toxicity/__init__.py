"""The toxicity task: fine-tune on non-toxic continuations, measure what each arm generates
(``task.py``: options, corpus, evaluation, comparison)."""

from lorafair.tasks.toxicity.task import Toxicity

__all__ = ["Toxicity"]
