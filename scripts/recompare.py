"""Rebuild the decisions of finished runs from their stored per-item results, without a model:
``compare.json`` (and ``analysis/counterfactual.json`` where the study computes it) through
``lorafair.study.decide.recompare`` and ``lorafair.study.counterfactual.repool``, the scorer-bias control of identity-group gaps where an
evaluation summary lacks it (only continuations that contain an identity term are scored again),
and the report. A run grown by ``run --until-decided`` keeps its sequential decisions (``sequential.json``).

    python scripts/recompare.py results/findings-detox results/findings-identity ...

Prints every decision that changed, old -> new.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorafair.report import build_report
from lorafair.store import rundir as store
from lorafair.study.counterfactual import repool
from lorafair.study.decide import recompare
from lorafair.study.sequential import annotate


def add_neutral_control(run_dir: Path) -> int:
    """Add ``neutral`` (``tasks.toxicity.task.neutral_control``) to every toxicity evaluation with
    identity groups that lacks it; returns how many summaries were rewritten."""
    from lorafair.study.config import load_study
    from lorafair.study.context import Context
    from lorafair.tasks.toxicity.task import neutral_control

    rd = store.RunDir(run_dir)
    study = load_study(rd.study_path())
    if study.task.name != "toxicity":
        return 0
    ctx, done = Context(study, lambda m: None), 0
    terms = [t for axis in _terms()["axes"].values() for t in axis]
    for (arm, seed), _ in rd.seed_dirs():
        got = rd.read_eval(arm, seed, "toxicity")
        if got is None or "neutral" in got[0] or not got[0].get("groups"):
            continue
        summary, rows = got
        summary["neutral"] = neutral_control(ctx.scorer, rows, terms, study.evaluation)
        rd.write_eval(arm, seed, "toxicity", summary, rows)
        done += 1
    return done


def _terms() -> dict:
    from lorafair.datasets.prompts import load_identity_terms

    return load_identity_terms()


def _decisions(path: Path) -> dict:
    return json.loads(path.read_text()).get("decisions", {}) if path.is_file() else {}


def _word(d: dict) -> str:
    return str(d.get("decision", "-")) + (" >δ" if d.get("beyond_margin") else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    for run in args.runs:
        rd = store.RunDir(run)
        files = [rd.compare_path(), rd.analysis_path("counterfactual")]
        before = {f: _decisions(f) for f in files}
        n = add_neutral_control(run)
        repool(run)  # before the comparison, which decides the divergence with the task's metrics
        out = recompare(run, log=lambda m: None)
        if rd.sequential_path().is_file():  # a run grown by run until decided keeps its sequential decisions
            store.write_json(rd.compare_path(), annotate(out, store.read_json(rd.sequential_path())))
        build_report(run)
        print(f"{run}: {n} evaluation summaries given the scorer-bias control")
        for f in files:
            old, new = before[f], _decisions(f)
            for arm in sorted(set(old) | set(new)):
                for m in sorted(set(old.get(arm, {})) | set(new.get(arm, {}))):
                    o, w = _word(old.get(arm, {}).get(m, {})), _word(new.get(arm, {}).get(m, {}))
                    if o != w:
                        print(f"  {f.name}: {arm} {m}: {o} -> {w}")


if __name__ == "__main__":
    main()
