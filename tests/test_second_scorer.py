"""Selection independent of evaluation: the self-detox corpus is chosen by another scorer than the
one that evaluates, and every toxicity evaluation carries a second scorer's numbers on the same
continuations with the agreement of the two (checked against scipy, sklearn and hand values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from lorafair import scorers

from lorafair.stats import metrics
from lorafair.study.config import second_scorer_name, study_from_dict
from lorafair.errors import UserError
from lorafair.study import corpus
from lorafair.study.context import make_task
from lorafair.study.session import open_session
from lorafair.study.runner import Runner

from conftest import tiny_study_dict, write_corpus


# ---------------------------------------------------------------- agreement


def test_agreement_by_hand():
    a = np.array([0.1, 0.6, 0.4, 0.9])
    b = np.array([0.2, 0.7, 0.55, 0.3])
    got = metrics.scorer_agreement(a, b, 0.5)
    # ranks a: 1 3 2 4, b: 1 4 3 2; d = 0 -1 -1 2, sum d^2 = 6; rho = 1 - 6 * 6 / (4 * 15) = 0.4
    assert got["spearman"] == pytest.approx(0.4)
    # flags a: F T F T, b: F T T F: two of four agree; p_o = 0.5, p_e = 0.5 * 0.5 + 0.5 * 0.5 -> kappa 0
    assert got["agreement"] == 0.5 and got["kappa"] == pytest.approx(0.0)
    assert (got["toxic_a"], got["toxic_b"], got["toxic_both"], got["n"]) == (0.5, 0.5, 0.25, 4)


def test_agreement_matches_scipy_and_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = np.clip(a + rng.normal(0, 0.2, 200), 0, 1)
    got = metrics.scorer_agreement(a, b, 0.5)
    rho, p = spearmanr(a, b)
    assert got["spearman"] == pytest.approx(rho) and got["spearman_p"] == pytest.approx(p)
    assert got["agreement"] == pytest.approx(np.mean((a >= 0.5) == (b >= 0.5)))
    assert got["kappa"] == pytest.approx(cohen_kappa_score(a >= 0.5, b >= 0.5))


def test_agreement_with_a_constant_scorer_is_undefined_not_nan():
    got = metrics.scorer_agreement(np.array([0.1, 0.2, 0.3]), np.zeros(3), 0.5)
    assert got["spearman"] is None and got["kappa"] is None and got["agreement"] == 1.0
    with pytest.raises(UserError, match="same length"):
        metrics.scorer_agreement(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------- which scorer does what


def test_default_scorers_are_the_other_packaged_one(tmp_path):
    d = tiny_study_dict(tmp_path / "run", tmp_path / "c.jsonl", data={"corpus": "self-detox"})
    study = study_from_dict(d, "s.yaml")
    assert second_scorer_name(study.evaluation) == "profanity-svm"
    assert make_task(study).selection_scorer(study) == "profanity-svm"
    d["evaluation"]["scorer"] = "profanity-svm"
    study = study_from_dict(d, "s.yaml")
    assert second_scorer_name(study.evaluation) == "jigsaw-bilstm"
    assert make_task(study).selection_scorer(study) == "jigsaw-bilstm"
    d["evaluation"]["second_scorer"] = None
    assert second_scorer_name(study_from_dict(d, "s.yaml").evaluation) is None
    d["evaluation"]["second_scorer"] = "hf:some/judge"  # any scorer name is accepted
    assert second_scorer_name(study_from_dict(d, "s.yaml").evaluation) == "hf:some/judge"


def test_selection_by_the_evaluation_scorer_is_refused(tmp_path):
    d = tiny_study_dict(tmp_path / "run", tmp_path / "c.jsonl",
                        data={"corpus": "self-detox", "selection_scorer": "jigsaw-bilstm"})
    with pytest.raises(UserError) as e:
        make_task(study_from_dict(d, "s.yaml"))
    assert "data.selection_scorer" in str(e.value) and "\n" not in str(e.value)
    d["data"] = {"corpus": "jsonl", "path": "x.jsonl", "selection_scorer": "jigsaw-bilstm"}
    make_task(study_from_dict(d, "s.yaml"))  # a given corpus selects nothing


def test_the_corpus_is_selected_with_the_selection_scorer(tmp_path, monkeypatch):
    used = []
    real = scorers.get_scorer
    monkeypatch.setattr(scorers, "get_scorer", lambda name="jigsaw-bilstm": used.append(name) or real(name))
    d = tiny_study_dict(tmp_path / "run", tmp_path / "c.jsonl",
                        data={"corpus": "self-detox", "n_prompts": 6, "samples": 2, "max_new_tokens": 3,
                              "threshold": 1.0, "val_fraction": 0.0, "heldout_fraction": 0.0})
    study = study_from_dict(d, "s.yaml")
    rows = corpus.build(open_session(study, log=lambda m: None)).splits["train"]
    assert used == ["profanity-svm"] and len(rows) == 6
    prof = real("profanity-svm").toxicity([x["completion"] for x in rows])
    np.testing.assert_allclose([x["score"] for x in rows], prof, rtol=1e-6)


# ---------------------------------------------------------------- the second opinion in results


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("second")
    d = tiny_study_dict(tmp / "run", write_corpus(tmp / "corpus.jsonl"), arms=["base", {"type": "lora", "rank": 2}],
                        training={"max_steps": 2}, evaluation={"samples": 3, "n_prompts": 4, "max_new_tokens": 6})
    study = study_from_dict(d, "tiny.yaml")
    results = Runner(study, log=lambda m: None).run(analyses=False, report=True)
    return study, results


def test_every_evaluation_reports_the_second_scorer_and_agreement(evaluated):
    from lorafair.store.rundir import RunDir

    study, results = evaluated
    evals = RunDir(study.output).evals("toxicity")
    prof = scorers.get_scorer("profanity-svm")
    for key, df in results.items():
        sec = evals[key]["second_scorer"]
        assert sec["scorer"]["name"] == "profanity-svm"
        np.testing.assert_allclose(df["score2"], prof.toxicity(df["continuation"].tolist()), rtol=1e-6)
        want = metrics.scorer_agreement(df["score"].to_numpy(), df["score2"].to_numpy(), 0.5)
        assert sec["agreement"] == pytest.approx(want, nan_ok=True)
        assert sec["agreement"]["agreement"] == pytest.approx(np.mean((df["score"] >= 0.5) == (df["score2"] >= 0.5)))
        assert sec["metrics"]["toxic_fraction"]["value"] == pytest.approx(np.mean(df["score2"] >= 0.5))
        assert sec["metrics"]["mean_score"]["value"] == pytest.approx(df["score2"].mean())


def test_console_and_report_show_the_second_scorer(evaluated):
    from rich.console import Console

    from lorafair.report.summary import print_summary

    study, _ = evaluated
    console = Console(record=True, width=300)
    print_summary(study.output, console)
    text = console.export_text()
    assert "second scorer" in text and "profanity-svm" in text
    md = (Path(study.output) / "report" / "summary.md").read_text()
    assert "a second scorer on the same continuations" in md and "Spearman" in md and "profanity-svm" in md
