"""The classification task: decisions on tabular profiles written as text, measured per protected
group (``task.py``); the data sets are declared in ``lorafair.datasets.tabular``."""

from lorafair.tasks.classification.task import Classification

__all__ = ["Classification"]
