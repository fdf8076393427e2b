"""``detoxify`` / ``detoxify:<variant>``: the Detoxify classifiers, used only when present offline.

Detoxify normally downloads its checkpoint at run time; here the checkpoint must already sit in the
torch hub cache (``<torch.hub.get_dir()>/checkpoints/<file>``), and the Hugging Face config and
tokenizer of its base transformer must already be in the Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lorafair.errors import UserError
from lorafair.packages import package_dir, package_version, slices
from lorafair.scorers.base import Scorer, files_hash

INSTALL = "pip install --no-deps detoxify"
CHECKPOINTS = {
    "original": "toxic_original-c1212f89.ckpt",
    "unbiased": "toxic_debiased-c7548aa0.ckpt",
    "multilingual": "multilingual_debiased-0b549669.ckpt",
    "original-small": "original-albert-0e1d6498.ckpt",
    "unbiased-small": "unbiased-albert-c8519128.ckpt",
}


def checkpoint_path(variant: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINTS[variant]


class DetoxifyScorer(Scorer):
    """Detoxify's labels (toxicity, severe_toxicity, ...); ``toxicity`` is the primary one."""

    def __init__(self, variant: str = "original", batch_size: int = 32) -> None:
        name = "detoxify" if variant == "original" else f"detoxify:{variant}"
        if variant not in CHECKPOINTS:
            raise UserError(f"scorer {name}: unknown variant; use one of {', '.join(CHECKPOINTS)}")
        ckpt = checkpoint_path(variant)
        need = f"and place its checkpoint at {ckpt} (it is never downloaded here)"
        try:
            package_dir("detoxify", INSTALL)
        except UserError:
            raise UserError(f"scorer {name}: package 'detoxify' is not installed; run `{INSTALL}` {need}") from None
        if not ckpt.is_file():
            raise UserError(f"scorer {name}: checkpoint missing; {need}")
        from detoxify import Detoxify

        try:
            self._model = Detoxify(checkpoint=str(ckpt), device="cpu")
        except (OSError, ValueError) as err:
            raise UserError(
                f"scorer {name}: cannot load {ckpt} offline ({err}); the base model's config and tokenizer "
                "must be in the Hugging Face cache"
            ) from None
        self.name, self.labels = name, list(self._model.class_names)
        self.primary = "toxicity" if "toxicity" in self.labels else self.labels[0]
        self.version = package_version("detoxify")
        self.weights_hash = files_hash([ckpt])
        self.batch_size = batch_size

    def _score(self, texts: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, list[float]] = {label: [] for label in self.labels}
        for s in slices(len(texts), self.batch_size):
            for label, values in self._model.predict(texts[s]).items():
                out[label].extend(values)
        return {label: np.asarray(v, dtype=np.float64) for label, v in out.items()}
