"""The scorer audit: Spearman and false-positive numbers against scipy and hand counts, the gap's null,
the neutral sentences, the CLI, and the report's warning."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats

from lorafair.cli import app
from lorafair.report.audit import audit_summary, scorer_warnings
from lorafair.scorers import audit as A


def test_spearman_matches_scipy_with_an_interval():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0.5, 1.0, 200)
    scores = np.clip(ref + rng.normal(0, 0.2, 200), 0, 1)
    scores[:20] = 0.7  # ties
    out = A.agreement(scores, ref, threshold=0.5, n_boot=300)
    rho = out["spearman"]
    assert rho["value"] == pytest.approx(stats.spearmanr(scores, ref).statistic, abs=1e-12)
    assert rho["lo"] < rho["value"] < rho["hi"] and rho["n"] == 200
    assert out["flagged"] == pytest.approx(np.mean(scores >= 0.5))
    assert out["reference_flagged"] == 1.0


def test_false_positive_rates_match_hand_counts():
    sentences = [{"group": g, "unit": u, "template_id": u} for g in ("a", "b", "c") for u in ("u1", "u2", "u3", "u4")]
    scores = np.array([0.9, 0.5, 0.1, 0.2,    # a: 0.9 and 0.5 flagged (>= threshold)
                       0.4, 0.49, 0.0, 0.0,   # b: none
                       0.6, 0.1, 0.1, 0.1])   # c: one
    out = A.false_positives(scores, sentences, threshold=0.5, n_perm=200)
    assert {g: r["fp_rate"] for g, r in out["groups"].items()} == {"a": 0.5, "b": 0.0, "c": 0.25}
    assert out["groups"]["b"]["mean_score"] == pytest.approx(0.89 / 4)
    assert out["fp_rate"] == pytest.approx(3 / 12) and out["n_sentences"] == 12 and out["n_templates"] == 4
    gap = out["gap"]["fp_rate"]
    assert gap["gap"] == 0.5 and gap["max_group"] == "a" and gap["min_group"] == "b"
    assert out["gap"]["mean_score"]["gap"] == pytest.approx((0.9 + 0.5 + 0.1 + 0.2) / 4 - 0.89 / 4)


def test_null_gap_is_the_mean_over_permutations_within_strata():
    # two groups, two strata of two cells: group labels swap or not in each stratum, 4 equally likely cases
    values = np.array([1.0, 0.0, 0.3, 0.1])
    groups = np.array(["x", "y", "x", "y"])
    strata = np.array([0, 0, 1, 1])
    exact = []
    for s0, s1 in itertools.product([False, True], repeat=2):
        g = groups.copy()
        if s0:
            g[[0, 1]] = g[[1, 0]]
        if s1:
            g[[2, 3]] = g[[3, 2]]
        means = [values[g == k].mean() for k in ("x", "y")]
        exact.append(max(means) - min(means))
    out = A.group_gap(values, groups, strata, n_perm=20000, seed=1)
    assert out["gap"] == pytest.approx(0.6)
    assert out["null_gap"] == pytest.approx(np.mean(exact), abs=0.01)
    assert out["value"] == pytest.approx(0.6 - out["null_gap"])
    # p-value: the observed gap is the largest of the 4 cases, reached in 2 of them (both swapped or none)
    assert out["p_value"] == pytest.approx(0.5, abs=0.02)


def test_identical_groups_give_no_gap_over_noise():
    values = np.tile([0.2, 0.7, 0.0], 5)  # every group has the same value in every stratum
    groups = np.repeat(["a", "b", "c", "d", "e"], 3)
    strata = np.tile([0, 1, 2], 5)
    out = A.group_gap(values, groups, strata, n_perm=100)
    assert out["gap"] == 0 and out["value"] == 0 and out["p_value"] == 1.0


def test_excess_interval_covers_zero_when_groups_do_not_differ():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(15), 24)
    strata = np.tile(np.arange(24), 15)
    covered = 0
    n_sim = 300
    for i in range(n_sim):
        unit = rng.uniform(0, 0.3, 24)  # templates differ, groups do not
        flags = (rng.random(360) < unit[strata]).astype(float)
        out = A.group_gap(flags, groups, strata, n_perm=200, seed=i)
        covered += out["lo"] <= 0 <= out["hi"]
    assert 0.92 <= covered / n_sim <= 0.99


def test_neutral_sentences_cover_every_group_and_template():
    rows = A.neutral_sentences()
    from lorafair.datasets.prompts import load_identity_terms

    terms = load_identity_terms()
    n_groups = sum(len(v) for v in terms["axes"].values())
    n_templates = len({r["template_id"] for r in rows})
    assert n_templates >= 10
    assert len(rows) == n_templates * n_groups * len(terms["genders"])
    assert len({r["group"] for r in rows}) == n_groups
    texts = {r["text"] for r in rows}
    assert "I am an Asian woman." in texts and "I am a Black man." in texts
    assert "An atheist man sat down at the table next to ours." in texts
    assert not any("{" in t or "}" in t for t in texts)


def test_audit_cli_writes_json_and_prints_a_summary(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFAIR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "audit.json"
    r = cli.invoke(app, ["audit-scorer", "profanity-svm", "--n-boot", "50", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    assert rec["scorer"]["name"] == "profanity-svm" and rec["agreement"]["n"] == len(rec["scores"]["agreement"])
    assert len(rec["scores"]["neutral"]) == rec["false_positives"]["n_sentences"]
    cached = list((tmp_path / "cache" / "audits").glob("profanity-svm-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == rec
    assert "Spearman" in r.output and "false-positive rate" in r.output
    # the stored scores reproduce the stored statistics
    texts, ref = A.rtp_texts()
    assert rec["agreement"]["spearman"]["value"] == pytest.approx(
        stats.spearmanr(rec["scores"]["agreement"], ref).statistic, abs=1e-12)


def test_audit_cli_bad_threshold(cli):
    r = cli.invoke(app, ["audit-scorer", "profanity-svm", "--threshold", "1.5"])
    assert r.exit_code == 2 and "--threshold 1.5" in r.output


def _audit_record(own_gap: float) -> dict:
    gap = {"gap": own_gap + 0.05, "null_gap": 0.05, "value": own_gap, "lo": own_gap - 0.05, "hi": own_gap + 0.05,
           "p_value": 0.01, "max_group": "religion=atheist", "min_group": "race=Asian"}
    return {"scorer": {"name": "s"}, "threshold": 0.5,
            "agreement": {"n": 10, "spearman": {"value": 0.5, "lo": 0.4, "hi": 0.6}, "flagged": 0.7,
                          "reference_flagged": 1.0, "mean_score": 0.6},
            "false_positives": {"n_sentences": 360, "n_templates": 12, "groups": {"a": {}, "b": {}},
                                "fp_rate": 0.1, "gap": {"fp_rate": gap, "mean_score": gap}}}


def test_report_warns_when_the_scorer_gap_is_of_the_same_order():
    evals = {(arm, 0): {"scorer": {"name": "s"}, "gaps": {"toxic_fraction": {"value": g}}}
             for arm, g in (("base", 0.30), ("full", 0.12), ("lora-r8", 0.15))}
    warns = scorer_warnings({"s": _audit_record(0.06)}, evals)
    assert len(warns) == 2
    assert "for full, lora-r8;" in warns[0] and "base" not in warns[0].split("for ")[1]
    assert "up to 0.180" in warns[1]
    assert scorer_warnings({"s": _audit_record(0.01)}, evals) == []
    assert scorer_warnings({"other": _audit_record(0.5)}, evals) == []  # a scorer the run did not use
    assert any("Spearman 0.500" in line for line in audit_summary(_audit_record(0.06)))


def test_a_toxicity_study_audits_its_scorer_and_reports_it(tmp_path, tiny_study):
    from lorafair.study.config import study_from_dict
    from lorafair.study.runner import Runner
    from lorafair.store.rundir import read_json

    d = tiny_study(task={"name": "toxicity", "options": {"prompts": "identity-race"}},
                   evaluation={"n_prompts": 4}, arms=["base"])
    Runner(study_from_dict(d, "s.yaml"), log=lambda m: None).run(analyses=False, report=True)
    out = tmp_path / "run"
    audits = read_json(out / "scorer_audit.json")
    assert list(audits) == ["jigsaw-bilstm", "profanity-svm"]  # the evaluation scorer and the second scorer
    assert audits["jigsaw-bilstm"]["false_positives"]["n_sentences"] == len(A.neutral_sentences())
    md = (out / "report" / "summary.md").read_text()
    assert "## Scorers: how far to trust them" in md and "| jigsaw-bilstm |" in md
    assert "Scorers: how far to trust them" in (out / "report" / "report.html").read_text()


def test_scorer_infos_finds_the_evaluation_and_the_second_scorer():
    a, b = {"name": "jigsaw-bilstm", "weights_hash": "x"}, {"name": "profanity-svm", "weights_hash": "y"}
    summaries = [{"scorer": a, "second_scorer": {"scorer": b, "metrics": {}}, "metrics": {"scorer": 1}}, {"scorer": a}]
    assert A.scorer_infos(summaries) == [a, b]
