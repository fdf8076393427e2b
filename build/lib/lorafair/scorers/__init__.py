"""Toxicity scorers behind one interface: ``get_scorer(name)`` -> ``Scorer``.

Names: ``jigsaw-bilstm`` (default), ``profanity-svm``, ``detoxify`` or ``detoxify:<variant>``, and
``hf:<model-id-or-folder>`` for any Hugging Face sequence classifier already on disk, and
``judge:<model>[@<template>]`` for a causal LM asked whether a text is toxic (see ``scorers/judge.py``). Each scorer is
built once per process; its heavy dependencies are imported only when it is built.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from lorafair.errors import UserError
from lorafair.scorers.base import Scorer

DEFAULT = "jigsaw-bilstm"


def _jigsaw(arg: str | None) -> Scorer:
    from lorafair.scorers.jigsaw import JigsawBiLSTM

    return JigsawBiLSTM()


def _profanity(arg: str | None) -> Scorer:
    from lorafair.scorers.profanity import ProfanitySVM

    return ProfanitySVM()


def _detoxify(arg: str | None) -> Scorer:
    from lorafair.scorers.detoxify import DetoxifyScorer

    return DetoxifyScorer(arg or "original")


def _hf(arg: str | None) -> Scorer:
    from lorafair.scorers.hf import HFClassifier

    if not arg:
        raise UserError("scorer 'hf:' names no model; write a model id or folder after the colon, e.g. hf:path/to/model")
    return HFClassifier(arg)


def _judge(arg: str | None) -> Scorer:
    from lorafair.scorers.judge import JudgeScorer

    return JudgeScorer(arg or "")


# name -> builder; the builder gets the text after "name:" (None without a colon)
_REGISTRY: dict[str, Callable[[str | None], Scorer]] = {
    "jigsaw-bilstm": _jigsaw,
    "profanity-svm": _profanity,
    "detoxify": _detoxify,
}
# prefix -> builder, for names of the form "prefix:<argument>"
_PREFIXED: dict[str, Callable[[str | None], Scorer]] = {"hf": _hf, "detoxify": _detoxify, "judge": _judge}
_PATTERNS = ["hf:<model-id-or-folder>", "detoxify:<variant>", "judge:<model>[@<template>]"]


def available_scorers() -> list[str]:
    """Fixed scorer names, default first; the patterns in ``_PATTERNS`` also work."""
    return list(_REGISTRY)


def other_scorer(name: str) -> str:
    """The packaged scorer that is not ``name``: profanity-svm for jigsaw-bilstm, jigsaw-bilstm for
    any other. The default second opinion on evaluations, and the default scorer that selects a
    self-detoxification corpus (never the one that evaluates)."""
    return "profanity-svm" if name == DEFAULT else DEFAULT


def get_scorer(name: str = DEFAULT) -> Scorer:
    """The scorer called ``name``, built on first use and reused afterwards in this process."""
    return _build(name)


@functools.lru_cache(maxsize=None)
def _build(name: str) -> Scorer:
    if name in _REGISTRY:
        return _REGISTRY[name](None)
    prefix, sep, arg = name.partition(":")
    if sep and prefix in _PREFIXED:
        return _PREFIXED[prefix](arg)
    valid = ", ".join(available_scorers() + _PATTERNS)
    raise UserError(f"unknown scorer '{name}'; valid names: {valid}")


__all__ = ["DEFAULT", "Scorer", "available_scorers", "get_scorer", "other_scorer"]
