"""The decisions of a run, from its comparison and its stored training records: the fit gate of every
trained arm (``stats.fit``), the primary metrics (the task's, or ``evaluation.primary``) and the
equivalence decisions (``stats.equivalence.decide_all``). Used by the compare stage and by
:func:`recompare`, which rebuilds ``compare.json`` from stored evaluations without a model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from lorafair.stats import equivalence
from lorafair.stats.fit import base_loss, fit_gate
from lorafair.stats.results import CompareResult
from lorafair.store import rundir as store


def fit_by_arm(rd: store.RunDir, arms: list[str], competence: dict[str, str],
               patience: int | None, seed_competence: dict[tuple[str, int], str] | None = None) -> dict[str, dict]:
    """arm -> fit gate for every trained arm but full (whose records are the reference);
    ``seed_competence``: (arm, seed) -> why that seed failed the task's check alone."""
    done = {a: [d for (arm, s), _ in rd.seed_dirs() if arm == a for d in [rd.done(arm, s)] if d] for a in arms}
    first = [log[0]["loss"] for (arm, s), _ in rd.seed_dirs() if arm != "base"
             for log in [rd.train_log(arm, s)] if log and "loss" in log[0]]
    lb = base_loss(first)
    failed = {a: {s: why for (arm, s), why in (seed_competence or {}).items() if arm == a} for a in arms}
    full = (len(failed.get("full") or {}), len(done["full"])) if done.get("full") else None
    out = {}
    for arm in arms:
        if arm in ("base", "full") or not done.get(arm):
            continue
        out[arm] = fit_gate(rd.read_lr_search(arm), done[arm], done.get("full") or [], lb,
                            competence.get(arm), patience=patience, seed_failures=failed.get(arm),
                            full_failures=full)
    return out


def with_counterfactual(rd: store.RunDir, study, res: CompareResult, margins: dict) -> CompareResult:
    """The comparison with the counterfactual divergence added as metric ``cf_js`` (pooled D per arm,
    arm − full with its crossed interval), read from ``analysis/counterfactual.json`` when the study
    computes it, so that it is decided with the task's metrics (and can be primary: in the Holm family
    and settled by run until decided). ``margins`` gains its margin."""
    path = rd.analysis_path("counterfactual")
    if not (study.evaluation.counterfactual.enabled and path.is_file()):
        return res
    cf = store.read_json(path)
    margins.setdefault("cf_js", (cf.get("margins") or {}).get("cf_js"))
    pooled = {a: dict(ms) for a, ms in res.pooled.items()}
    minus_full = {a: dict(ms) for a, ms in res.minus_full.items()}
    for arm, e in (cf.get("arms") or {}).items():
        if e.get("js") and arm in pooled:
            pooled[arm]["cf_js"] = e["js"]
        if e.get("minus_full") and arm in minus_full:
            minus_full[arm]["cf_js"] = {**e["minus_full"], "higher_is_better": False}
    return dataclasses.replace(res, pooled=pooled, minus_full=minus_full)


def decide_run(rd: store.RunDir, study, task, res: CompareResult,
               results: dict[tuple[str, int], pd.DataFrame]) -> dict:
    """compare.json's content: the comparison (with the counterfactual divergence where the study
    computes it), margins, primary metrics, fit gate and decisions."""
    margins = {**task.default_margins(), **study.evaluation.margins}
    res = with_counterfactual(rd, study, res, margins)
    primary = list(study.evaluation.primary or task.PRIMARY)
    arms = sorted({a for a, _ in results})
    fit = fit_by_arm(rd, arms, task.competence(results, res.pooled), study.training.early_stopping_patience,
                     task.seed_competence(results))
    out = res.to_json(margins, equivalence.decide_all(res.minus_full, margins, primary, fit))
    out.update(primary=primary, fit=fit)
    return out


def recompare(run_dir: str | Path, log=print) -> dict:
    """Rebuild ``compare.json`` of a finished run from its stored per-item evaluation rows (no model
    is loaded, nothing is retrained or re-evaluated) and write it; returns it. The counterfactual
    divergence is read from ``analysis/counterfactual.json``: pool it again first
    (``study.counterfactual.repool``) where the per-template divergences changed."""
    from lorafair.study.config import load_study
    from lorafair.study.context import Context, make_task

    rd = store.RunDir(Path(run_dir))
    study = load_study(rd.study_path())
    study.output = str(run_dir)
    task = make_task(study)
    results = {}
    for (arm, seed), _ in rd.seed_dirs():
        got = rd.read_eval(arm, seed, task.name)
        if got is not None:
            results[(arm, seed)] = got[1]
    res = task.compare(Context(study, log), results).check()
    out = decide_run(rd, study, task, res, results)
    store.write_json(rd.compare_path(), out)
    return out

