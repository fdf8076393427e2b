"""``hf:<id-or-path>``: any Hugging Face sequence-classification model, from a folder or the local cache.

Nothing is downloaded: a hub id must already be in the Hugging Face cache. Labels come from
``config.id2label``; probabilities are a sigmoid per label for ``multi_label_classification`` models and
a softmax over labels otherwise. The primary label is the first whose name contains "toxic" (names such
as "non-toxic" or "not_toxic" excluded), else the last label.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from lorafair.errors import UserError
from lorafair.packages import package_version, slices
from lorafair.scorers.base import Scorer, files_hash

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
_NEGATED = re.compile(r"(^|[^a-z])(non|not|no)[\s_-]*toxic")


def primary_label(labels: list[str]) -> str:
    """First label naming toxicity (not its negation), else the last label."""
    for label in labels:
        low = label.lower()
        if "toxic" in low and not _NEGATED.search(low):
            return label
    return labels[-1]


def resolve_folder(model: str) -> Path:
    """A local folder as given, or the cached snapshot of a hub id; UserError when neither exists."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception as err:  # not cached, or not a valid repo id
        raise UserError(
            f"scorer hf:{model}: not found as a local folder or in the Hugging Face cache "
            f"({type(err).__name__}); this offline default cannot download, so save the model with "
            "save_pretrained and pass its folder"
        ) from None


class HFClassifier(Scorer):
    """Texts -> per-label probabilities of a transformers sequence classifier, batched on CPU."""

    def __init__(self, model: str, batch_size: int = 32, max_length: int = 512) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = resolve_folder(model)
        weights = sorted(p for g in WEIGHT_GLOBS for p in folder.glob(g))
        if not weights:
            raise UserError(f"scorer hf:{model}: no weight files ({', '.join(WEIGHT_GLOBS)}) in {folder}")
        try:
            self._tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self._model = AutoModelForSequenceClassification.from_pretrained(
                folder, local_files_only=True, dtype=torch.float32
            ).eval()
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"scorer hf:{model}: cannot load a sequence classifier from {folder}: {err}") from None
        config = self._model.config
        if self._tok.pad_token is None and self._tok.eos_token is not None:
            self._tok.pad_token = self._tok.eos_token
        if config.pad_token_id is None:
            config.pad_token_id = self._tok.pad_token_id
        self.name = f"hf:{model}"
        self.version = f"transformers {package_version('transformers')}"
        self.weights_hash = files_hash(weights)
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        if len(set(self.labels)) != len(self.labels):
            raise UserError(f"scorer hf:{model}: config.id2label has repeated names {self.labels}; make them unique")
        self.primary = primary_label(self.labels)
        self.multi_label = config.problem_type == "multi_label_classification"
        self.max_length = min(max_length, self._tok.model_max_length or max_length)
        # Without a pad token texts cannot share a batch.
        self.batch_size = batch_size if self._tok.pad_token is not None else 1

    def _score(self, texts: list[str]) -> dict[str, np.ndarray]:
        chunks = []
        with torch.no_grad():
            for s in slices(len(texts), self.batch_size):
                enc = self._tok(texts[s], padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
                logits = self._model(**enc).logits.float()  # [b, labels]
                chunks.append(torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1))
        probs = torch.cat(chunks).numpy()
        return {label: probs[:, j] for j, label in enumerate(self.labels)}
