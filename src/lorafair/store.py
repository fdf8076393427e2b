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
      scorer_audit.json          audits of the scorers the run used (how far to trust them)
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


class RunDir:
    """Paths and reads/writes of one study's run directory (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def check_writable(self) -> None:
        from lorafair.errors import UserError

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-probe"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"output: cannot write to {self.path} ({e.strerror}); choose a writable folder "
                            "with output: in the study or fix its permissions") from None

    def write_study(self, resolved: dict) -> None:
        import yaml

        write_text(self.path / "study.yaml", yaml.safe_dump(resolved, sort_keys=False))
        write_json(self.path / "study.json", {"study": resolved, "hash": content_hash(resolved)})

    def corpus_path(self, name: str, h: str) -> Path:
        return self.path / "data" / f"{name}-{h}.jsonl"

    def arm_dir(self, arm: str, seed: int) -> Path:
        return self.path / arm / f"seed-{seed}"

    def checkpoint_dir(self, arm: str, seed: int) -> Path:
        return self.arm_dir(arm, seed) / "checkpoint"

    def weights_dir(self, arm: str, seed: int, kind: str) -> Path:
        return self.arm_dir(arm, seed) / ("adapter" if kind == "lora" else "model")

    def is_done(self, arm: str, seed: int, h: str) -> bool:
        f = self.arm_dir(arm, seed) / "done.json"
        return f.is_file() and read_json(f).get("hash") == h

    def done(self, arm: str, seed: int) -> dict | None:
        f = self.arm_dir(arm, seed) / "done.json"
        return read_json(f) if f.is_file() else None

    def clear_arm(self, arm: str, seed: int) -> None:
        import shutil

        d = self.arm_dir(arm, seed)
        if d.exists():
            shutil.rmtree(d)

    def write_arm_config(self, arm: str, seed: int, cfg: dict) -> None:
        write_json(self.arm_dir(arm, seed) / "config.json", cfg)

    def save_weights(self, arm: str, seed: int, save, kind: str) -> None:
        """save(folder) writes into a temporary folder that is renamed into place."""
        import shutil

        final = self.weights_dir(arm, seed, kind)
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        save(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)

    def write_train_log(self, arm: str, seed: int, log: list[dict], val_curve: list[dict]) -> None:
        write_jsonl(self.arm_dir(arm, seed) / "train_log.jsonl", log)
        write_json(self.arm_dir(arm, seed) / "val_curve.json", val_curve)

    def train_log(self, arm: str, seed: int) -> list[dict]:
        f = self.arm_dir(arm, seed) / "train_log.jsonl"
        return read_jsonl(f) if f.is_file() else []

    def mark_done(self, arm: str, seed: int, summary: dict) -> None:
        import shutil

        write_json(self.arm_dir(arm, seed) / "done.json", summary)
        ck = self.checkpoint_dir(arm, seed)
        if ck.exists():
            shutil.rmtree(ck)
        failed = self.arm_dir(arm, seed) / "failed.json"
        if failed.exists():
            failed.unlink()

    def write_failed(self, arm: str, seed: int, info: dict) -> None:
        write_json(self.arm_dir(arm, seed) / "failed.json", info)

    def lr_search_path(self, arm: str) -> Path:
        return self.path / "lr_search" / f"{arm}.json"

    def read_lr_search(self, arm: str) -> dict | None:
        f = self.lr_search_path(arm)
        return read_json(f) if f.is_file() else None

    def write_lr_search(self, arm: str, record: dict) -> None:
        write_json(self.lr_search_path(arm), record)

    def eval_paths(self, arm: str, seed: int, task: str) -> tuple[Path, Path]:
        d = self.arm_dir(arm, seed) / "eval"
        return d / f"{task}.json", d / f"{task}.parquet"

    def write_eval(self, arm: str, seed: int, task: str, summary: dict, rows: pd.DataFrame) -> None:
        j, p = self.eval_paths(arm, seed, task)
        write_parquet(p, rows)
        write_json(j, summary)  # written last: its presence means both are complete

    def read_eval(self, arm: str, seed: int, task: str) -> tuple[dict, pd.DataFrame] | None:
        j, p = self.eval_paths(arm, seed, task)
        if not (j.is_file() and p.is_file()):
            return None
        return read_json(j), pd.read_parquet(p)

    def evals(self, task: str) -> dict[tuple[str, int], dict]:
        """Every evaluation summary of a task in this run: (arm, seed) -> summary."""
        out = {}
        for j in sorted(self.path.glob(f"*/seed-*/eval/{task}.json")):
            arm, seed = j.parts[-4], int(j.parts[-3].split("-", 1)[1])
            out[(arm, seed)] = read_json(j)
        return out

    def analysis_path(self, name: str, ext: str = "json") -> Path:
        return self.path / "analysis" / f"{name}.{ext}"

    def scorer_audit_path(self) -> Path:
        """The audits of the scorers this run used: {scorer name: audit record}."""
        return self.path / "scorer_audit.json"

    def report_dir(self) -> Path:
        return self.path / "report"
