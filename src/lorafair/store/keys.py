"""Every cache key of a run, in one place. A key is the content hash of every input its result
depends on, each input named in the function's arguments: change any of them and the key changes,
so the cached result is recomputed. The model enters every key as (source, content hash).

- corpus: the fine-tuning corpus file (data/<corpus>-<key>.jsonl)
- train: one arm x seed's training (its done.json ``hash``); also part of its evaluation keys
- search: one arm's learning-rate search (lr_search/<arm>.json ``key``)
- checkpoint: a training checkpoint (resumed only under the same train key and learning rate)
- evaluation: one arm x seed's task evaluation (eval/<task>.json ``hash``)
- counterfactual: one arm x seed's counterfactual divergence (eval/counterfactual.json ``hash``)

Inputs are plain data (dicts of settings, strings); ``content_hash`` sorts keys, so dict order
does not matter.
"""

from __future__ import annotations

from lorafair.store.rundir import content_hash

BASE = "base"


def model_id(source: str, model_hash: str) -> list[str]:
    """The model as every key names it: where it comes from and what its files hold."""
    return [source, model_hash]


def corpus_key(task_key: dict, source: str, model_hash: str, scorer: str) -> str:
    """task_key: the task's corpus settings (Task.corpus_key()); the model and scorer build or select it."""
    return content_hash(task_key | {"model": model_id(source, model_hash), "scorer": scorer})


def train_key(arm: dict, seed: int, training: dict, source: str, model_hash: str, corpus_hash: str) -> str:
    """arm: Arm.to_dict(); training: the study's training settings as a dict."""
    return content_hash({"arm": arm, "seed": seed, "training": training, "model": model_id(source, model_hash),
                         "corpus": corpus_hash})


def search_key(arm: dict, search: dict, training: dict, source: str, model_hash: str, corpus_hash: str) -> str:
    """search: the lr_search settings (also inside ``training``, named on their own for clarity)."""
    return content_hash({"arm": arm, "search": search, "corpus": corpus_hash, "training": training,
                         "model": model_id(source, model_hash)})


def checkpoint_key(train: str, lr: float) -> str:
    return content_hash([train, lr])


def arm_state(train: str | None, model_hash: str) -> str | list[str]:
    """What an evaluated model is: a trained arm's train key, or the base model by its hash (None: base)."""
    return train if train is not None else [BASE, model_hash]


def evaluation_key(train: str | None, model_hash: str, evaluation: dict, task_key: dict) -> str:
    """train: the arm x seed's train key (None for base); evaluation: the settings that change what
    is measured (see lorafair.study.session.measured_settings); task_key: Task.corpus_key()."""
    return content_hash({"train": arm_state(train, model_hash), "eval": evaluation, "task": task_key})


def counterfactual_key(train: str | None, model_hash: str, counterfactual: dict, source: str) -> str:
    """counterfactual: evaluation.counterfactual as a dict."""
    return content_hash({"train": arm_state(train, model_hash), "counterfactual": counterfactual, "model": source})
