"""Read a run directory's result files into plain dicts and DataFrames (never a model).

Every optional file may be missing: a loader returns ``None`` or an empty container for it, so a
plot is drawn only when its data exists. Arms are named ``base``, ``full`` or ``<variant>-r<rank>``
(``lora-r8``, ``rslora-r8``, ``dora-r8``).

Seed pooling (:func:`pooled_metrics`): the task's own pooled records in ``compare.json`` are used
when present (they resample seeds and prompts together); otherwise the value is the mean over seeds
and the interval is the envelope of the seeds' intervals (lowest ``lo`` to highest ``hi``), a
conservative band marked ``"pooling": "seed-mean"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from lorafair.errors import UserError
from lorafair.stats.results import finite, is_record, upgrade_summary
from lorafair.store.rundir import RunDir, read_json
from lorafair.arms.names import arm_order
from lorafair.study import stages

Key = tuple[str, int]  # (arm, seed)


@dataclass
class Run:
    """Everything the report shows about one run directory."""

    path: Path
    name: str
    study: dict
    study_hash: str | None = None
    evals: dict[str, dict[Key, dict]] = field(default_factory=dict)  # task -> (arm, seed) -> summary
    done: dict[Key, dict] = field(default_factory=dict)
    failed: dict[Key, dict] = field(default_factory=dict)
    configs: dict[Key, dict] = field(default_factory=dict)
    train_logs: dict[Key, pd.DataFrame] = field(default_factory=dict)
    val_curves: dict[Key, pd.DataFrame] = field(default_factory=dict)
    lr_search: dict[str, dict] = field(default_factory=dict)
    compare: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    kl: dict | None = None  # arm -> {kl_base_arm: {mean, ...}, shift_captured: record, ...}
    lens: pd.DataFrame | None = None
    counterfactual: dict | None = None  # analysis/counterfactual.json: pooled divergence per arm, per layer
    weights: dict | None = None
    results: dict[str, Any] = field(default_factory=dict)  # stage -> what its loader read (study.stages)
    data_files: list[tuple[str, str]] = field(default_factory=list)  # (corpus name, content hash)
    scorer_audit: dict = field(default_factory=dict)  # scorer name -> audit record

    @property
    def arms(self) -> list[str]:
        names = {a for t in self.evals.values() for a, _ in t} | {a for a, _ in self.done}
        return sorted(names | {a for a, _ in self.failed}, key=arm_order)

    @property
    def task(self) -> str | None:
        return (self.study.get("task") or {}).get("name")

    @property
    def cf_decisions(self) -> dict[str, dict]:
        """arm -> the decision on the counterfactual divergence (arm − full): compare.json's, where it
        is decided with the task's metrics (and, when primary, Holm-adjusted or settled by run until
        decided), else the counterfactual analysis's own (runs compared before it was)."""
        own = {a: d["cf_js"] for a, d in ((self.counterfactual or {}).get("decisions") or {}).items() if "cf_js" in d}
        merged = {a: d["cf_js"] for a, d in (self.compare.get("decisions") or {}).items() if "cf_js" in d}
        return merged or own


def _json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _parquet(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def is_run_dir(path: Path) -> bool:
    return Path(path).is_dir() and RunDir(path).is_run()


def _study(rd: RunDir) -> tuple[dict, str | None]:
    sj = _json(rd.study_path("json"))
    if isinstance(sj, dict) and isinstance(sj.get("study"), dict):
        return sj["study"], sj.get("hash")
    try:
        import yaml

        return yaml.safe_load(rd.study_path().read_text()) or {}, None
    except (OSError, ValueError):
        return {}, None


def _dict(path: Path) -> dict | None:
    v = _json(path)
    return v if isinstance(v, dict) else None


def _read_seed(run: Run, rd: RunDir, arm: str, seed: int) -> None:
    """One arm and seed's files into ``run``."""
    key = (arm, seed)
    for name, target in (("done.json", run.done), ("failed.json", run.failed), ("config.json", run.configs)):
        v = _dict(rd.arm_file(arm, seed, name))
        if v is not None:
            target[key] = v
    log = rd.train_log(arm, seed)
    if log:
        run.train_logs[key] = pd.DataFrame(log)
    vc = _json(rd.arm_file(arm, seed, "val_curve.json"))
    if isinstance(vc, list) and vc:
        run.val_curves[key] = pd.DataFrame(vc)
    for name in rd.eval_names(arm, seed):
        v = _dict(rd.eval_paths(arm, seed, name)[0])
        if v is not None:
            run.evals.setdefault(name, {})[key] = upgrade_summary(v)


def load_run(run_dir: str | Path) -> Run:
    """Read every result file of ``run_dir``; UserError when it is not a run directory."""
    path = Path(run_dir)
    if not is_run_dir(path):
        raise UserError(f"{path}: not a run directory (no study.yaml or study.json); "
                        "give the output folder of a study run")
    rd = RunDir(path)
    study, h = _study(rd)
    run = Run(path=path, name=str(study.get("name") or path.name), study=study, study_hash=h)
    for (arm, seed), _ in rd.seed_dirs():
        _read_seed(run, rd, arm, seed)
    for f in rd.lr_search_paths():
        v = _dict(f)
        if v is not None:
            run.lr_search[f.stem] = v
    run.compare = _json(rd.compare_path()) or {}
    run.timings = _json(rd.timings_path()) or {}
    named = {f.name for f in fields(Run)}
    for s in stages.with_results():  # the analyses, each read by the loader its table entry names
        run.results[s.name] = stages.resolve(s.load)(rd)
        if s.name in named:
            setattr(run, s.name, run.results[s.name])
    run.scorer_audit = _dict(rd.scorer_audit_path()) or {}
    for f in rd.corpus_files():
        name, _, hsh = f.stem.rpartition("-")
        run.data_files.append((name or f.stem, hsh if name else ""))
    return run


def read_kl(rd: RunDir) -> dict | None:
    return _kl(_json(rd.analysis_path("kl")))


def read_lens(rd: RunDir) -> pd.DataFrame | None:
    return _parquet(rd.analysis_path("lens", "parquet"))


def read_counterfactual(rd: RunDir) -> dict | None:
    return _dict(rd.analysis_path("counterfactual"))


def read_weights(rd: RunDir) -> dict | None:
    return _dict(rd.analysis_path("weights"))


def _kl(raw: Any) -> dict | None:
    """Accept ``{arm: entry}`` or ``{"arms": {arm: entry}, ...}``."""
    if not isinstance(raw, dict):
        return None
    arms = raw.get("arms") if isinstance(raw.get("arms"), dict) else raw
    out = {a: e for a, e in arms.items() if isinstance(e, dict)}
    return out or None


# ----------------------------------------------------------------------------- derived views


def pool(records: list[dict]) -> dict | None:
    """One record from several seeds' records: mean value, envelope interval (module docstring)."""
    recs = [r for r in records if is_record(r)]
    if not recs:
        return None
    if len(recs) == 1:
        return dict(recs[0])
    los = [r["lo"] for r in recs if finite(r.get("lo"))]
    his = [r["hi"] for r in recs if finite(r.get("hi"))]
    out = {k: v for k, v in recs[0].items() if k in ("higher_is_better", "unit")}
    out.update(value=sum(r["value"] for r in recs) / len(recs), lo=min(los) if los else math.nan,
               hi=max(his) if his else math.nan, n_seeds=len(recs), pooling="seed-mean")
    return out


def headline_names(run: Run, task: str) -> list[str]:
    names: list[str] = []
    for s in run.evals.get(task, {}).values():
        for n, r in (s.get("metrics") or {}).items():
            if is_record(r) and n not in names:
                names.append(n)
    return names


def pooled_metrics(run: Run, task: str) -> dict[str, dict[str, dict]]:
    """arm -> metric -> record, seeds pooled (compare.json "pooled" first, else seed mean)."""
    by_arm: dict[str, list[dict]] = {}
    for (arm, _), s in sorted(run.evals.get(task, {}).items()):
        by_arm.setdefault(arm, []).append(s.get("metrics") or {})
    cmp_pooled = run.compare.get("pooled") if task == run.task else None
    if task == "counterfactual" and run.counterfactual:  # seeds x templates crossed records
        cmp_pooled = {a: {f"cf_{k}": v for k, v in e.items()}
                      for a, e in (run.counterfactual.get("arms") or {}).items()}
    out: dict[str, dict[str, dict]] = {}
    for arm in sorted(by_arm, key=arm_order):
        out[arm] = {}
        for name in headline_names(run, task):
            seeds = [m.get(name) for m in by_arm[arm]]
            rec = pool(seeds)
            cp = ((cmp_pooled or {}).get(arm) or {}).get(name)
            if is_record(cp) and rec is not None:
                rec = {**{k: rec[k] for k in ("higher_is_better", "unit") if k in rec}, **cp}
            if rec is not None:
                out[arm][name] = rec
    return out


def group_records(run: Run, task: str) -> dict[str, dict[str, dict[str, dict]]]:
    """arm -> group -> measure -> record (seeds pooled), from the summaries' ``groups``."""
    per: dict[str, dict[str, dict[str, list[dict]]]] = {}
    for (arm, _), s in sorted(run.evals.get(task, {}).items()):
        for grp, measures in (s.get("groups") or {}).items():
            for m, r in measures.items():
                if is_record(r):
                    per.setdefault(arm, {}).setdefault(grp, {}).setdefault(m, []).append(r)
    return {a: {g: {m: pool(rs) for m, rs in ms.items()} for g, ms in gs.items()}
            for a, gs in sorted(per.items(), key=lambda kv: arm_order(kv[0]))}


def best_val_loss(run: Run) -> dict[str, float]:
    """arm -> best validation loss (mean over its finished seeds)."""
    vals: dict[str, list[float]] = {}
    for (arm, _), d in run.done.items():
        v = d.get("best_val_loss")
        if finite(v):
            vals.setdefault(arm, []).append(float(v))
    return {a: sum(v) / len(v) for a, v in sorted(vals.items(), key=lambda kv: arm_order(kv[0]))}


def lens_table(run: Run) -> pd.DataFrame | None:
    """Mean over sequences per (arm, layer) of the lens columns present; None without lens data."""
    df = run.lens
    if df is None or not {"arm", "layer"} <= set(df.columns) or df.empty:
        return None
    cols = [c for c in df.columns if c not in ("arm", "layer", "seq", "n_tokens")
            and pd.api.types.is_numeric_dtype(df[c])]
    return df.groupby(["arm", "layer"], sort=False)[cols].mean().reset_index() if cols else None


def seeds(run: Run) -> list[int]:
    s = run.study.get("seeds")
    return list(s) if isinstance(s, list) else sorted({k[1] for k in run.done})


__all__ = ["Run", "load_run", "is_run_dir", "pool", "pooled_metrics",
           "group_records", "best_val_loss", "lens_table", "headline_names", "seeds"]
