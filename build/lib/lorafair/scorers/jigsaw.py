"""``jigsaw-bilstm``: the toxic-comment-classifier 0.3.0 network, rebuilt in PyTorch from its HDF5 weights.

The package's own code needs TensorFlow; its weights (``model/model.weights.h5``, Keras 3 layout) and its
pickled Keras tokenizer (``model/tokenizer.pickle``) are read here without Keras.

Network: embedding 20000x50 -> bidirectional LSTM (50 per direction) -> max over all 100 time steps ->
dense 100->50 ReLU -> dense 50->6 sigmoid. The model was built without masking, so the LSTM also runs
over the left padding (id 0) and the padded steps take part in the max; this is what reproduces the
package's published outputs.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lorafair.errors import UserError
from lorafair.packages import package_dir, package_version, slices
from lorafair.scorers.base import Scorer, files_hash

PACKAGE = "toxic_classifier"
INSTALL = "pip install --no-deps toxic-comment-classifier==0.3.0 h5py"
LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
MAXLEN, VOCAB, EMBED, UNITS = 100, 20000, 50, 50


class KerasTokenizerState:
    """Stand-in for ``keras...text.Tokenizer``: unpickling only restores its attribute dictionary."""

    word_index: dict[str, int]
    filters: str
    lower: bool
    split: str
    num_words: int | None
    oov_token: str | None


class _TokenizerUnpickler(pickle.Unpickler):
    """Resolves the Keras tokenizer class to the stand-in; allows only the containers its state uses."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("builtins", "int"): int,
    }

    def find_class(self, module: str, name: str):
        if name == "Tokenizer" and module.startswith("keras"):
            return KerasTokenizerState
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"tokenizer pickle refers to unexpected {module}.{name}")


def load_tokenizer(path: str | Path) -> KerasTokenizerState:
    with open(path, "rb") as f:
        tok = _TokenizerUnpickler(f).load()
    if getattr(tok, "char_level", False) or getattr(tok, "analyzer", None) is not None:
        raise UserError(f"{path}: only word-level Keras tokenizers without a custom analyzer are supported")
    return tok


def encode(texts: list[str], tok: KerasTokenizerState, maxlen: int = MAXLEN) -> torch.Tensor:
    """Keras ``texts_to_sequences`` + ``pad_sequences`` (pre-truncate, pre-pad with 0) -> ids [n, maxlen]."""
    table = str.maketrans({c: tok.split for c in tok.filters})
    oov = tok.word_index.get(tok.oov_token) if tok.oov_token is not None else None
    out = np.zeros((len(texts), maxlen), dtype=np.int64)
    for row, text in enumerate(texts):
        text = text.lower() if tok.lower else text
        ids = []
        for word in filter(None, text.translate(table).split(tok.split)):
            i = tok.word_index.get(word, oov)
            if i is not None and tok.num_words and i >= tok.num_words:
                i = oov
            if i is not None:
                ids.append(i)
        ids = ids[-maxlen:]
        if ids:
            out[row, maxlen - len(ids):] = ids
    return torch.from_numpy(out)


class BiLSTMNet(nn.Module):
    """ids [b, t] -> probabilities [b, 6]."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, EMBED)
        self.lstm = nn.LSTM(EMBED, UNITS, batch_first=True, bidirectional=True)
        self.hidden = nn.Linear(2 * UNITS, 50)
        self.out = nn.Linear(50, len(LABELS))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embedding(ids))  # [b, t, 2*units]
        pooled = h.max(dim=1).values  # [b, 2*units], padded steps included as in Keras
        return torch.sigmoid(self.out(torch.relu(self.hidden(pooled))))

    @classmethod
    def from_h5(cls, path: str | Path) -> "BiLSTMNet":
        """Keras kernels are [in, out] with gates i,f,c,o (= torch i,f,g,o); one bias -> torch bias_ih."""
        import h5py

        net = cls()
        with h5py.File(path, "r") as f:
            def get(key: str) -> torch.Tensor:
                return torch.from_numpy(np.asarray(f["layers/" + key], dtype=np.float32))

            state = {"embedding.weight": get("embedding/vars/0")}
            for keras_dir, suffix in (("forward_layer", ""), ("backward_layer", "_reverse")):
                cell = f"bidirectional/{keras_dir}/cell/vars/"
                state[f"lstm.weight_ih_l0{suffix}"] = get(cell + "0").T.contiguous()
                state[f"lstm.weight_hh_l0{suffix}"] = get(cell + "1").T.contiguous()
                state[f"lstm.bias_ih_l0{suffix}"] = get(cell + "2")
                state[f"lstm.bias_hh_l0{suffix}"] = torch.zeros(4 * UNITS)
            for name, keras_dir in (("hidden", "dense"), ("out", "dense_1")):
                state[f"{name}.weight"] = get(f"{keras_dir}/vars/0").T.contiguous()
                state[f"{name}.bias"] = get(f"{keras_dir}/vars/1")
        net.load_state_dict(state)
        return net.eval()


class JigsawBiLSTM(Scorer):
    """Six Jigsaw labels; ``toxic`` is the primary one."""

    def __init__(self, batch_size: int = 256) -> None:
        folder = package_dir(PACKAGE, INSTALL) / "model"
        weights, tokenizer = folder / "model.weights.h5", folder / "tokenizer.pickle"
        for p in (weights, tokenizer):
            if not p.is_file():
                raise UserError(f"{p} is missing; reinstall with `{INSTALL}`")
        self.name, self.labels, self.primary = "jigsaw-bilstm", list(LABELS), "toxic"
        self.version = package_version("toxic-comment-classifier")
        self.weights_hash = files_hash([weights, tokenizer])
        self.batch_size = batch_size
        self._tok = load_tokenizer(tokenizer)
        self._net = BiLSTMNet.from_h5(weights)

    def _score(self, texts: list[str]) -> dict[str, np.ndarray]:
        ids = encode(texts, self._tok)
        with torch.no_grad():
            probs = torch.cat([self._net(ids[s]) for s in slices(len(texts), self.batch_size)]).numpy()
        return {label: probs[:, j] for j, label in enumerate(self.labels)}
