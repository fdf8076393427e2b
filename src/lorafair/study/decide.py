"""The decisions of a run, from its comparison and its stored training records: the fit gate of every
trained arm (``stats.fit``), the primary metrics (the task's, or ``evaluation.primary``) and the
equivalence decisions (``stats.equivalence.decide_all``). Used by the compare stage and by
:func:`recompare`, which rebuilds ``compare.json`` from stored evaluations without a model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lorafair.stats import equivalence
from lorafair.stats.fit import base_loss, fit_gate
from lorafair.stats.results import CompareResult
from lorafair.store import rundir as store


def fit_by_arm(rd: store.RunDir, arms: list[str], competence: dict[str, str],
               patience: int | None) -> dict[str, dict]:
    """arm -> fit gate for every trained arm but full (whose records are the reference)."""
    done = {a: [d for (arm, s), _ in rd.seed_dirs() if arm == a for d in [rd.done(arm, s)] if d] for a in arms}
    first = [log[0]["loss"] for (arm, s), _ in rd.seed_dirs() if arm != "base"
             for log in [rd.train_log(arm, s)] if log and "loss" in log[0]]
    lb = base_loss(first)
    out = {}
    for arm in arms:
        if arm in ("base", "full") or not done.get(arm):
            continue
        out[arm] = fit_gate(rd.read_lr_search(arm), done[arm], done.get("full") or [], lb,
                            competence.get(arm), patience=patience)
    return out


def decide_run(rd: store.RunDir, study, task, res: CompareResult,
               results: dict[tuple[str, int], pd.DataFrame]) -> dict:
    """compare.json's content: the comparison, margins, primary metrics, fit gate and decisions."""
    margins = {**task.default_margins(), **study.evaluation.margins}
    primary = list(study.evaluation.primary or task.PRIMARY)
    arms = sorted({a for a, _ in results})
    fit = fit_by_arm(rd, arms, task.competence(results, res.pooled), study.training.early_stopping_patience)
    out = res.to_json(margins, equivalence.decide_all(res.minus_full, margins, primary, fit))
    out.update(primary=primary, fit=fit)
    return out


def recompare(run_dir: str | Path, log=print) -> dict:
    """Rebuild ``compare.json`` of a finished run from its stored per-item evaluation rows (no model
    is loaded, nothing is retrained or re-evaluated) and write it; returns it. The counterfactual
    analysis is pooled again by ``study.counterfactual.repool``."""
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

