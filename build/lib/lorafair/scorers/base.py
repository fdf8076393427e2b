"""The scorer interface shared by every toxicity classifier, and the helpers that locate its files.

A scorer maps texts to per-label probabilities in [0, 1]. ``score`` validates the input, handles the
empty case and checks the outputs; a concrete scorer only implements ``_score``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lorafair.errors import UserError


class Scorer(ABC):
    """A text classifier whose outputs are probabilities; ``primary`` is the label read as toxicity."""

    name: str
    version: str
    weights_hash: str
    labels: list[str]
    primary: str

    @abstractmethod
    def _score(self, texts: list[str]) -> dict[str, np.ndarray]:
        """texts: n >= 1 strings -> {label: probabilities [n]}."""

    def score(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """texts: n strings -> {label: float64 probabilities [n]}, one entry per label in ``labels``."""
        texts = check_texts(texts, self.name)
        if not texts:
            return {label: np.zeros(0, dtype=np.float64) for label in self.labels}
        out = self._score(texts)
        result = {label: np.asarray(out[label], dtype=np.float64).reshape(len(texts)) for label in self.labels}
        for label, p in result.items():
            if not np.all((p >= 0.0) & (p <= 1.0)):
                raise RuntimeError(f"scorer {self.name} returned values outside [0, 1] for label {label}")
        return result

    def toxicity(self, texts: Sequence[str]) -> np.ndarray:
        """texts: n strings -> probability of the primary label [n]."""
        return self.score(texts)[self.primary]

    def info(self) -> dict:
        """What a result needs to record to say which classifier produced it."""
        return {
            "name": self.name,
            "version": self.version,
            "weights_hash": self.weights_hash,
            "labels": list(self.labels),
            "primary": self.primary,
        }


def check_texts(texts: Sequence[str], where: str) -> list[str]:
    """Refuse a bare string (it would be scored character by character) and non-string items."""
    if isinstance(texts, (str, bytes)):
        raise UserError(f"scorer {where}: expected a list of texts, got a single string; wrap it in a list")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise UserError(f"scorer {where}: item {bad[0]} is {type(texts[bad[0]]).__name__}, not str; pass strings only")
    return texts


def files_hash(paths: Sequence[str | Path], n: int = 16) -> str:
    """sha256 over the bytes of the files in the given order; first ``n`` hex digits."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:n]
