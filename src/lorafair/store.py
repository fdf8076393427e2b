"""The run directory: its layout, atomic writes and content hashes. Only this module knows paths.

Layout::

    <output>/
      study.yaml                 resolved study (as validated)
      data/<name>-<hash>.jsonl   fine-tuning corpora, cached by content hash
      <arm>/seed-<s>/
        config.json              resolved arm config and its hash
        train_log.jsonl          one row per logged step
        checkpoint/              last checkpoint (resume)
        adapter/ or model/       final PEFT adapter or full weights (safetensors)
        done.json                written last: marks the arm finished
        eval/<task>.json         task metrics;  eval/<task>.parquet per-sample rows
      analysis/                  kl, lens, weights results
      lr_search/<arm>.json       learning-rate search records
      report/                    report.html, summary.md, *.png
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd


def content_hash(obj: Any, n: int = 12) -> str:
    """Stable short hash of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_hash(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
            f.flush()
            os.fsync(f.fileno())

    _atomic(Path(path), w)


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_text(path: str | Path, text: str) -> None:
    def w(tmp):
        Path(tmp).write_text(text)

    _atomic(Path(path), w)


def write_bytes(path: str | Path, data: bytes) -> None:
    def w(tmp):
        Path(tmp).write_bytes(data)

    _atomic(Path(path), w)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    def w(tmp):
        df.to_parquet(tmp, index=False)

    _atomic(Path(path), w)


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
