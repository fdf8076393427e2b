"""Copy a run directory's result files, never its weights, to a folder that can be committed.

What stays: every JSON, JSONL, YAML, Parquet, Markdown, HTML and image file (study, corpora, per-arm
summaries and rows, training logs, learning-rate records, compare.json with the decisions and
metrics tables beside it, analyses, timings, report).
What goes: weight files (adapters, full models, checkpoints with their optimizer state), the
tracker's store (``tracking/``), the lock and unfinished temporary files. ``lorafair report``
rebuilds the report from the copy.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from lorafair.errors import UserError
from lorafair.store.lock import LOCK_NAME
from lorafair.store.rundir import TMP_SUFFIX, RunDir

KEEP = {".json", ".jsonl", ".yaml", ".yml", ".parquet", ".md", ".html", ".png", ".svg", ".csv", ".txt"}
# checkpoint: resume state (weights and optimizer), meaningless without them; tracking: the
# TensorBoard or MLflow store of the training curves, which the exported train_log.jsonl files hold too
SKIP_DIRS = {"checkpoint", "tracking"}


def result_files(run_dir: Path) -> list[Path]:
    """The files of ``run_dir`` an export keeps, relative to it, sorted."""
    keep = []
    for f in sorted(Path(run_dir).rglob("*")):
        rel = f.relative_to(run_dir)
        if not f.is_file() or f.is_symlink() or SKIP_DIRS & set(rel.parts[:-1]):
            continue
        if f.name == LOCK_NAME or f.name.endswith(TMP_SUFFIX) or f.suffix.lower() not in KEEP:
            continue
        keep.append(rel)
    return keep


def export(run_dir: Path, dest: Path, force: bool = False) -> list[Path]:
    """Copy ``run_dir``'s result files to ``dest`` (made whole in a temporary sibling folder, then
    renamed into place, so an interrupted export leaves no half-written ``dest``). Returns the files."""
    run_dir, dest = Path(run_dir), Path(dest)
    if not RunDir(run_dir).is_run():
        raise UserError(f"{run_dir}: not a run directory (no study.yaml or study.json); give the output folder of "
                        "a study run")
    if dest.resolve() == run_dir.resolve() or run_dir.resolve() in dest.resolve().parents:
        raise UserError(f"{dest}: inside the run directory {run_dir}; export to a folder outside it")
    if dest.exists() and not force:
        raise UserError(f"{dest}: exists; remove it or pass --force to replace it")
    files = result_files(run_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=TMP_SUFFIX))
    try:
        for rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / rel, tmp / rel)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return files
