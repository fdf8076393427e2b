"""The lending task: the model as the bank's policy in a two-group credit environment.

- ``env.py``: the environment (gymnasium) and batched rollouts;
- ``policies.py``: the reference threshold policies (max-profit, equal opportunity);
- ``measures.py``: per-step and final measures of rollout rows, one policy's summary;
- ``task.py``: options, corpus, the LLM policy, evaluation and comparison;
- ``report.py``: the task's own report figure (per-step measures per group).
"""

from lorafair.tasks.lending.task import Lending

__all__ = ["Lending"]
