"""The run directory: its layout, atomic writes and content hashes. Only this module knows paths.

Layout::

    <output>/
      study.yaml                 resolved study (as validated); study.json: the same with its hash
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
      compare.json               every arm pooled over seeds, arm − full differences, decisions
      decisions.csv, .parquet    the decisions as a tidy table, one row per arm × metric (store.tables)
      metrics.parquet            every evaluation's metrics, one row per task × arm × seed × metric
      tracking/                  TensorBoard event files or the MLflow store (study's tracking:)
      timings.json               wall time per stage
      report/                    report.html, summary.md, *.png
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from lorafair.store.lock import LOCK_NAME, RunLock


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


TMP_SUFFIX = ".tmp"


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def write_via_temp(path: str | Path, write) -> None:
    """write(tmp) into a uniquely named temporary file next to `path`, then rename it into place.
    The file gets the mode the user's umask gives new files (not the temporary file's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def strict(obj: Any) -> Any:
    """`obj` with every float that is not finite (nan, inf) replaced by None: strict JSON has no
    NaN or Infinity, and readers in other languages reject them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(strict(obj), f, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())

    write_via_temp(Path(path), w)


def read_json(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise _damaged(path, e) from None


def write_text(path: str | Path, text: str) -> None:
    def w(tmp):
        Path(tmp).write_text(text)

    write_via_temp(Path(path), w)


def write_bytes(path: str | Path, data: bytes) -> None:
    def w(tmp):
        Path(tmp).write_bytes(data)

    write_via_temp(Path(path), w)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(strict(r), default=_json_default, allow_nan=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (ValueError, UnicodeDecodeError) as e:
        raise _damaged(path, e) from None


def _damaged(path, e: Exception):
    from lorafair.errors import UserError

    return UserError(f"{path}: damaged file, not valid JSON ({type(e).__name__}); delete it and run the same "
                     "command again to redo what it held")


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    def w(tmp):
        df.to_parquet(tmp, index=False)

    write_via_temp(Path(path), w)


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, np.generic):
        return strict(o.item())
    if isinstance(o, np.ndarray):
        return strict(o.tolist())
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _read_header(p: Path) -> None:
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.read_metadata(p)
    else:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            f.keys()


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

    def study_path(self, ext: str = "yaml") -> Path:
        """``study.yaml`` (the resolved study) or, with ``ext="json"``, ``study.json`` (it and its hash)."""
        return self.path / f"study.{ext}"

    def write_study(self, resolved: dict) -> None:
        import yaml

        write_text(self.study_path(), yaml.safe_dump(resolved, sort_keys=False))
        # the same study anywhere, tracked or not: the same hash
        where = {k: v for k, v in resolved.items() if k not in ("output", "tracking")}
        write_json(self.study_path("json"), {"study": resolved, "hash": content_hash(where)})

    def compare_path(self) -> Path:
        return self.path / "compare.json"

    def table_path(self, name: str, ext: str = "parquet") -> Path:
        """A tidy table beside compare.json: ``decisions.csv``, ``decisions.parquet``, ``metrics.parquet``."""
        return self.path / f"{name}.{ext}"

    def all_evals(self) -> dict[str, dict[tuple[str, int], dict]]:
        """Every evaluation summary of the run: task (or ``probes``) -> (arm, seed) -> summary."""
        from lorafair.stats.results import upgrade_summary

        names = sorted({n for (arm, seed), _ in self.seed_dirs() for n in self.eval_names(arm, seed)})
        return {n: {k: upgrade_summary(v) for k, v in self.evals(n).items()} for n in names}

    def write_tables(self) -> list[Path]:
        """``decisions.csv``/``.parquet`` from compare.json and ``metrics.parquet`` from the
        evaluation summaries, rewritten from those files (nothing without compare.json)."""
        from lorafair.store.tables import decisions_table, metrics_table

        if not self.compare_path().is_file():
            return []
        decisions = decisions_table(read_json(self.compare_path()))
        write_text(self.table_path("decisions", "csv"), decisions.to_csv(index=False))
        write_parquet(self.table_path("decisions"), decisions)
        write_parquet(self.table_path("metrics"), metrics_table(self.all_evals()))
        return [self.table_path("decisions", "csv"), self.table_path("decisions"), self.table_path("metrics")]

    def timings_path(self) -> Path:
        return self.path / "timings.json"

    def sequential_path(self) -> Path:
        """The plan of ``run --until-decided``: its looks, seeds and what each look decided."""
        return self.path / "sequential.json"

    def seed_dirs(self) -> list[tuple[tuple[str, int], Path]]:
        """Every ``<arm>/seed-<s>`` folder: ((arm, seed), folder), sorted."""
        out = []
        for d in sorted(self.path.glob("*/seed-*")):
            arm, s = d.parent.name, d.name.split("-", 1)[1]
            if d.is_dir() and s.lstrip("-").isdigit() and arm not in ("analysis", "report", "data", "lr_search"):
                out.append(((arm, int(s)), d))
        return out

    def arm_file(self, arm: str, seed: int, name: str) -> Path:
        """A file of one arm and seed: ``config.json``, ``done.json``, ``failed.json``, ``val_curve.json``."""
        return self.arm_dir(arm, seed) / name

    def eval_names(self, arm: str, seed: int) -> list[str]:
        """The evaluations written for one arm and seed (task names, ``probes``, ...)."""
        return [j.stem for j in sorted((self.arm_dir(arm, seed) / "eval").glob("*.json"))]

    def lr_search_paths(self) -> list[Path]:
        return sorted((self.path / "lr_search").glob("*.json"))

    def corpus_files(self) -> list[Path]:
        """The cached fine-tuning corpora, ``data/<name>-<hash>.jsonl``."""
        return sorted((self.path / "data").glob("*.jsonl"))

    def failures(self) -> dict[tuple[str, int], dict]:
        """(arm, seed) -> the record of a training stopped because its loss diverged."""
        return {k: read_json(d / "failed.json") for k, d in self.seed_dirs() if (d / "failed.json").is_file()}

    def remove_leftovers(self) -> list[Path]:
        """Delete temporary files and folders that a killed process left behind (only call this while
        holding the lock: a running process's temporaries look the same)."""
        import shutil

        gone = sorted(p for p in self.path.rglob(f".*{TMP_SUFFIX}") if p.exists())
        for p in gone:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        return gone

    def is_run(self) -> bool:
        return self.study_path().is_file() or self.study_path("json").is_file()

    def finished_arms(self) -> list[Path]:
        return sorted(self.path.glob("*/seed-*/done.json"))

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)

    def check_files(self) -> None:
        """Read every result file of an earlier run (JSON in full; Parquet and safetensors: their
        headers), so a damaged one is named now rather than hours into a resumed run."""
        from lorafair.errors import UserError

        for p in sorted(self.path.rglob("*")):
            if not p.is_file() or any(part.startswith(".") for part in p.relative_to(self.path).parts):
                continue
            if p.suffix == ".json":
                read_json(p)
            elif p.suffix == ".jsonl":
                read_jsonl(p)
            elif p.suffix in (".parquet", ".safetensors"):
                try:
                    _read_header(p)
                except Exception as e:  # each library raises its own kind for a damaged file
                    raise UserError(f"{p}: damaged file ({type(e).__name__}); delete it and run the same command "
                                    "again to redo what it held") from None

    def lock(self) -> "RunLock":
        return RunLock(self.path / LOCK_NAME)

    def corpus_path(self, name: str, h: str) -> Path:
        return self.path / "data" / f"{name}-{h}.jsonl"

    def superseded_corpora(self, current: Path) -> list[Path]:
        """The other built corpora of the same name as `current` (``<name>-<hash>.jsonl``): earlier
        settings' corpora, which no arm of this run trains on any more."""
        name = current.name.rsplit("-", 1)[0]
        return [p for p in self.corpus_files() if p != current and p.name.rsplit("-", 1)[0] == name]

    def arm_dir(self, arm: str, seed: int) -> Path:
        return self.path / arm / f"seed-{seed}"

    def checkpoint_dir(self, arm: str, seed: int) -> Path:
        return self.arm_dir(arm, seed) / "checkpoint"

    def weights_dir(self, arm: str, seed: int, kind: str) -> Path:
        return self.arm_dir(arm, seed) / ("adapter" if kind == "lora" else "model")

    def is_done(self, arm: str, seed: int, h: str) -> bool:
        """Finished with hash `h`, and every output the arm promises is there and opens; an arm whose
        outputs were deleted or damaged since is not done, so a run redoes it."""
        f = self.arm_file(arm, seed, "done.json")
        return f.is_file() and read_json(f).get("hash") == h and self.arm_problem(arm, seed) is None

    def arm_problem(self, arm: str, seed: int) -> str | None:
        """Why a finished arm's outputs cannot be used, or None: its config, training log and
        validation curve parse to the right shapes, and its weights folder holds a config and
        safetensors whose headers read (a cheap check: no tensor is loaded)."""
        def problem(p: Path, want: type | None) -> str | None:
            if not p.is_file():
                return f"{p.name} is missing"
            try:
                data = read_jsonl(p) if p.suffix == ".jsonl" else read_json(p)
            except Exception:  # noqa: BLE001 - damaged in any way: redo
                return f"{p.name} is damaged"
            return f"{p.name} is damaged" if want is not None and not isinstance(data, want) else None

        d = self.arm_dir(arm, seed)
        for name, want in (("config.json", dict), ("val_curve.json", list), ("train_log.jsonl", list)):
            if (why := problem(d / name, want)) is not None:
                return why
        kind = (read_json(d / "config.json").get("arm") or {}).get("type")
        if kind == "base":
            return None
        folder = self.weights_dir(arm, seed, "lora" if kind != "full" else "full")
        why = problem(folder / ("adapter_config.json" if kind != "full" else "config.json"), dict)
        if why is not None:
            return f"{folder.name}/{why}"
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            return f"{folder.name}/ holds no safetensors weights"
        for w in weights:
            try:
                _read_header(w)
            except Exception:  # noqa: BLE001 - each library raises its own kind
                return f"{folder.name}/{w.name} is damaged"
        return None

    def done(self, arm: str, seed: int) -> dict | None:
        f = self.arm_file(arm, seed, "done.json")
        return read_json(f) if f.is_file() else None

    def clear_arm(self, arm: str, seed: int) -> None:
        import shutil

        d = self.arm_dir(arm, seed)
        if d.exists():
            shutil.rmtree(d)

    def write_arm_config(self, arm: str, seed: int, cfg: dict) -> None:
        write_json(self.arm_file(arm, seed, "config.json"), cfg)

    def save_weights(self, arm: str, seed: int, save, kind: str) -> None:
        """save(folder) writes into a temporary folder that is renamed into place."""
        import shutil

        final = self.weights_dir(arm, seed, kind)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=TMP_SUFFIX))
        try:
            save(tmp)
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    def write_train_log(self, arm: str, seed: int, log: list[dict], val_curve: list[dict]) -> None:
        write_jsonl(self.arm_dir(arm, seed) / "train_log.jsonl", log)
        write_json(self.arm_file(arm, seed, "val_curve.json"), val_curve)

    def train_log(self, arm: str, seed: int) -> list[dict]:
        f = self.arm_dir(arm, seed) / "train_log.jsonl"
        return read_jsonl(f) if f.is_file() else []

    def mark_done(self, arm: str, seed: int, summary: dict) -> None:
        import shutil

        write_json(self.arm_file(arm, seed, "done.json"), summary)
        ck = self.checkpoint_dir(arm, seed)
        if ck.exists():
            shutil.rmtree(ck)
        failed = self.arm_file(arm, seed, "failed.json")
        if failed.exists():
            failed.unlink()

    def write_failed(self, arm: str, seed: int, info: dict) -> None:
        write_json(self.arm_file(arm, seed, "failed.json"), info)

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
        summary = read_json(j)
        if not isinstance(summary, dict):  # damaged in shape: evaluated again
            return None
        return summary, pd.read_parquet(p)

    def evals(self, task: str) -> dict[tuple[str, int], dict]:
        """Every evaluation summary of a task in this run: (arm, seed) -> summary."""
        out = {}
        for j in sorted(self.path.glob(f"*/seed-*/eval/{task}.json")):
            arm, seed = j.parts[-4], int(j.parts[-3].split("-", 1)[1])
            summary = read_json(j)
            if isinstance(summary, dict):
                out[(arm, seed)] = summary
        return out

    def analysis_path(self, name: str, ext: str = "json") -> Path:
        return self.path / "analysis" / f"{name}.{ext}"

    def scorer_audit_path(self) -> Path:
        """The audits of the scorers this run used: {scorer name: audit record}."""
        return self.path / "scorer_audit.json"

    def report_dir(self) -> Path:
        return self.path / "report"
