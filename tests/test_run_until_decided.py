"""``lorafair run --until-decided`` end to end on the tiny random model: an arm clearly worse than
full stops at the first look, an arm like full goes on until decided or capped, and a run killed
in the middle of a look resumes to the same plan and result. Scores come from ``sequential_stub``
(a hash of each continuation; the worse arm shifted), the rest is lorafair's own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sequential_stub  # noqa: F401  (registers the scorer)
from conftest import tiny_study_dict, write_yaml
from lorafair.errors import UserError
from lorafair.store.rundir import RunDir, read_json
from lorafair.study.config import study_from_dict
from lorafair.study.runner import Runner
from lorafair.study.sequential import annotate, decide, new_plan, next_look, reopen_for_budget

REPO = Path(__file__).resolve().parents[1]
MAX_SEEDS = 5
PRIMARY = ["toxic_fraction", "mean_score", "expected_max_toxicity", "toxicity_probability"]


def run_until_decided(study, log=print, analyses: bool = True, report: bool = True) -> RunDir:
    return Runner(study, log=log).run_until_decided(analyses, report)


def study_dict(out: Path, corpus: Path, **sequential) -> dict:
    return tiny_study_dict(out, corpus, arms=["full", {"type": "lora", "ranks": [1, 2]}], seeds=[0, 1, 2],
                           evaluation={"scorer": "stub-hash", "second_scorer": None, "audit_scorer": False,
                                       "n_prompts": 16, "samples": 2, "primary": PRIMARY,
                                       "sequential": {"max_seeds": MAX_SEEDS, "seeds_per_look": 1, **sequential}})


def outcome(out: Path) -> dict:
    """The plan without its timings, and the decisions of compare.json."""
    plan = read_json(RunDir(out).sequential_path())
    for look in plan["looks"]:
        for k in ("wall_s", "estimate_s", "overhead_s"):
            look.pop(k, None)
    compare = read_json(RunDir(out).compare_path())
    return {"plan": plan, "decisions": compare["decisions"], "minus_full": compare["minus_full"]}


def trained_seeds(out: Path, arm: str) -> list[int]:
    rd = RunDir(out)
    return sorted(s for (a, s), _ in rd.seed_dirs() if a == arm and rd.done(a, s))


def test_worse_arm_stops_at_the_first_look_and_the_other_goes_on(tmp_path, corpus_file):
    logs: list[str] = []
    out = tmp_path / "run"
    run_until_decided(study_from_dict(study_dict(out, corpus_file), "s.yaml"), log=logs.append,
                      analyses=False, report=True)
    plan = read_json(RunDir(out).sequential_path())
    worse, same = plan["arms"]["lora-r1"], plan["arms"]["lora-r2"]
    assert worse["status"] == "decided" and worse["looks"] == [3]
    assert {m: (d["decision"], d["look"]) for m, d in worse["decisions"].items()} == {
        m: ("worse", 1) for m in PRIMARY}
    assert same["looks"][0] == 3 and len(same["looks"]) > 1
    assert same["status"] == "decided" or (same["status"] == "capped" and same["looks"][-1] == MAX_SEEDS)
    assert not any(d["decision"].startswith("worse") for d in same["decisions"].values())
    assert trained_seeds(out, "lora-r1") == [0, 1, 2]
    assert trained_seeds(out, "lora-r2") == plan["seeds"][:same["looks"][-1]]
    assert trained_seeds(out, "full") == plan["seeds"] and len(plan["seeds"]) == same["looks"][-1]
    compare = read_json(RunDir(out).compare_path())
    assert compare["sequential"]["key"] == plan["key"]
    primary = {m for m, d in compare["decisions"]["lora-r1"].items() if d["primary"]}
    assert primary == set(PRIMARY)
    for m in primary:
        d = compare["decisions"]["lora-r1"][m]
        assert d["decision"] == "worse" and d["sequential"]["look"] == 1 and d["sequential"]["level_test"] < 0.05
        assert d["fitted"] is True and d["p_value"] is not None and d["beyond_margin"] is True
    for m in PRIMARY:  # a decision left open ends at the cap: inconclusive, or at the floor (no toxic event)
        d = compare["decisions"]["lora-r2"][m]
        if d["sequential"]["look"] is None:
            assert d["decision"] in ("inconclusive", "uninformative (floor)")
            assert d["sequential"]["ending"] == f"inconclusive after {MAX_SEEDS} seeds (cap)"
        else:
            assert d["decision"] in ("equivalent", "better", "better, within δ")
    assert any(line.startswith("look 2: training lora-r2 to 4 seeds; full to 4 seeds; about") for line in logs)
    html = (out / "report" / "report.html").read_text()
    assert "Run until decided" in html and "lora-r1" in html
    before = outcome(out)
    run_until_decided(study_from_dict(study_dict(out, corpus_file), "s.yaml"), log=lambda m: None,
                      analyses=False, report=False)
    assert outcome(out) == before  # a finished plan is only read back


def test_a_plan_for_other_settings_is_refused(tmp_path, corpus_file):
    out = tmp_path / "run"
    RunDir(out).path.mkdir(parents=True)
    plan = new_plan(study_from_dict(study_dict(out, corpus_file), "s.yaml"))
    (out / "sequential.json").write_text(json.dumps(plan))
    other = study_from_dict(study_dict(out, corpus_file, max_seeds=9), "s.yaml")
    with pytest.raises(UserError, match="follows a plan for other seeds"):
        run_until_decided(other, log=lambda m: None)


@pytest.mark.parametrize("change, message", [
    ({"seeds": [0]}, "starts from at least 2 training seeds"),
    ({"seeds": [0, 1, 2], "evaluation": {"sequential": {"max_seeds": 2}}}, "max_seeds: 2 is below the study's 3"),
])
def test_bad_sequential_settings_end_in_one_line(tmp_path, corpus_file, change, message):
    d = tiny_study_dict(tmp_path / "run", corpus_file, **change)
    with pytest.raises(UserError, match=message):
        run_until_decided(study_from_dict(d, "s.yaml"), log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_budget_trims_the_look_and_ends_open_arms(tmp_path, corpus_file):
    """The planner's look is cut to what the budget holds; when not even one seed fits, the open
    arms end "(budget)"."""
    study = study_from_dict(study_dict(tmp_path / "run", corpus_file, budget_minutes=1.0), "s.yaml")
    plan = new_plan(study)
    plan["looks"][0]["done"] = True
    plan["arms"]["lora-r1"]["looks"] = [3]
    plan["arms"]["lora-r2"]["looks"] = [3]
    diff = {"value": 0.0, "lo": -0.1, "hi": 0.1, "components": {"seed": 0.001, "unit": 0.0, "inter": 0.0},
            "n_seeds": 3, "n_units": 16}
    compare = {"minus_full": {a: {"m": diff} for a in ("lora-r1", "lora-r2")},
               "decisions": {a: {"m": {"decision": "inconclusive", "margin": 0.02, "primary": True, "fitted": True}}
                             for a in ("lora-r1", "lora-r2")}}
    per_seed = lambda targets, full: 10.0 * sum(n - 3 for n in targets.values()) + 10.0 * (full - 3)  # noqa: E731
    look = next_look(plan, compare, per_seed, spent_s=0.0)
    assert look is not None and per_seed(look["arms"], look["full"]) <= 60
    assert all(n >= 4 for n in look["arms"].values())
    assert next_look(plan, compare, per_seed, spent_s=45.0) is None
    assert {a["status"] for a in plan["arms"].values()} == {"budget"}
    out = annotate(compare, plan)
    assert out["decisions"]["lora-r1"]["m"]["sequential"]["ending"] == "inconclusive after 3 seeds (budget)"
    reopen_for_budget(plan, 10.0)  # the study's budget raised: the arms go on
    assert {a["status"] for a in plan["arms"].values()} == {"open"}
    assert next_look(plan, compare, per_seed, spent_s=45.0) is not None


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_look_resumes_to_the_same_plan_and_result(tmp_path, corpus_file):
    path = write_yaml(tmp_path / "s.yaml", study_dict(tmp_path / "run", corpus_file))
    cmd = [sys.executable, str(REPO / "tests" / "sequential_stub.py"), "run", str(path), "--until-decided",
           "--no-analyses", "--no-report"]
    first = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    started = tmp_path / "run" / "lora-r2" / "seed-3"  # look 2 has begun training
    deadline = time.time() + 400
    try:
        while not started.exists():
            assert first.poll() is None and time.time() < deadline, "look 2 never started"
            time.sleep(0.02)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    plan = read_json(tmp_path / "run" / "sequential.json")
    assert len(plan["looks"]) == 2 and not plan["looks"][1]["done"]  # killed in the middle of look 2
    again = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    run_until_decided(study_from_dict(study_dict(tmp_path / "clean", corpus_file), "s.yaml"), log=lambda m: None,
                      analyses=False, report=False)
    assert outcome(tmp_path / "run") == outcome(tmp_path / "clean")
    assert not list((tmp_path / "run").rglob("*.tmp")) and not (tmp_path / "run" / ".lock").exists()


def test_only_primary_metrics_of_fitted_arms_are_planned_and_the_fit_gate_is_final(tmp_path, corpus_file):
    """decide() settles the primary metrics (``primary`` set by decide_run) of arms that passed the
    fit gate; an arm that did not fit ends ``not fitted`` with its "no verdict" kept; annotate keeps
    decide_run's fields and words a decided difference inside δ as "worse, within δ"."""
    study = study_from_dict(study_dict(tmp_path / "run", corpus_file), "s.yaml")
    plan = new_plan(study)
    worse = {"value": 0.5, "lo": 0.03, "hi": 0.97, "n_seeds": 3, "n_units": 100, "higher_is_better": False,
             "parts": {"v_seed": 1e-6, "df_seed": 2, "v_unit": 1e-6, "df_unit": 99}}
    entry = {"decision": "worse, within δ", "margin": 1.5, "fitted": True, "primary": True, "p_value": 1e-9,
             "p_holm": 2e-9}
    no_fit = {**entry, "decision": "no verdict: did not fit (loss rose)", "fitted": False}
    compare = {"minus_full": {"lora-r1": {"m": worse, "s": worse}, "lora-r2": {"m": worse}},
               "decisions": {"lora-r1": {"m": entry, "s": {**entry, "primary": False}}, "lora-r2": {"m": no_fit}}}
    now = decide(plan, compare)
    assert now == {"lora-r1": {"m": "worse, within δ"}}
    assert plan["arms"]["lora-r1"]["status"] == "decided" and "s" not in plan["arms"]["lora-r1"]["decisions"]
    assert plan["arms"]["lora-r2"]["status"] == "not fitted"
    assert next_look(plan, compare, lambda t, f: 0.0, 0.0) is None  # nothing open: no more seeds
    out = annotate(compare, plan)["decisions"]
    r1 = out["lora-r1"]["m"]
    assert r1["decision"] == "worse, within δ" and r1["beyond_margin"] is False
    assert (r1["fitted"], r1["primary"], r1["p_value"], r1["p_holm"]) == (True, True, 1e-9, 2e-9)
    assert r1["sequential"]["look"] == 1 and "Holm" in r1["sequential"]["multiplicity"]
    assert out["lora-r1"]["s"] == compare["decisions"]["lora-r1"]["s"]  # secondary: fixed-sample, untouched
    assert out["lora-r2"]["m"] == no_fit


def test_a_primary_decision_at_the_floor_at_the_cap_stays_uninformative(tmp_path, corpus_file):
    study = study_from_dict(study_dict(tmp_path / "run", corpus_file), "s.yaml")
    plan = new_plan(study)
    floor = {"value": 0.0, "lo": 0.0, "hi": 0.0, "n_seeds": 5, "n_units": 32, "events": {"arm": 0, "full": 0},
             "components": {"seed": 0.0, "unit": 0.0, "inter": 0.0}}
    entry = {"decision": "uninformative (floor)", "margin": 0.02, "fitted": True, "primary": True}
    compare = {"minus_full": {a: {"m": floor} for a in ("lora-r1", "lora-r2")},
               "decisions": {a: {"m": entry} for a in ("lora-r1", "lora-r2")}}
    plan["looks"][0]["arms"] = {"lora-r1": MAX_SEEDS, "lora-r2": MAX_SEEDS}
    decide(plan, compare)
    assert {a["status"] for a in plan["arms"].values()} == {"capped"}
    got = annotate(compare, plan)["decisions"]["lora-r1"]["m"]
    assert got["decision"] == "uninformative (floor)"
    assert got["sequential"]["ending"] == f"inconclusive after {MAX_SEEDS} seeds (cap)"


def test_analyses_of_a_finished_run_cover_the_seeds_the_plan_added(tmp_path, corpus_file):
    from lorafair.study.sequential import with_planned_seeds

    study = study_from_dict(study_dict(tmp_path / "run", corpus_file), "s.yaml")
    assert with_planned_seeds(study).seeds == [0, 1, 2]  # no plan yet: the study's own seeds
    path = RunDir(tmp_path / "run").sequential_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"seeds": [0, 1, 2, 3, 4]}))
    assert with_planned_seeds(study).seeds == [0, 1, 2, 3, 4]
    assert study.seeds == [0, 1, 2]  # the study itself is left as it was
