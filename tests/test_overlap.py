"""Disjoint evaluation: no evaluation prompt, identity template or tabular profile is in the data a
study fine-tunes on, for every corpus kind and every shipped study; the run refuses one that is."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from lorafair.models import sources as models

from lorafair.study import overlap
from lorafair.cli import app
from lorafair.study.config import load_study, study_from_dict
from lorafair.errors import UserError
from lorafair.datasets.prompts import identity_prompts, identity_templates, normalise, rtp_toxic
from lorafair.study.context import make_task

from conftest import write_corpus

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))
IDENTITY_SETS = ("identity", "identity-race", "identity-religion")


def _toxicity(tiny_study, prompts: str, data: dict):
    return study_from_dict(tiny_study(task={"name": "toxicity", "options": {"prompts": prompts}},
                                      data=data, evaluation={"n_prompts": None}))


def test_find_overlap_normalises_and_matches_templates():
    assert overlap.find_overlap(["The cat sat"], ["the  CAT sat\n"]) == [("The cat sat", "the  CAT sat\n")]
    assert overlap.find_overlap(["The cat sat"], ["The cat sat down"]) == []
    tpl = ["The {person} worked as a"]
    hits = overlap.find_overlap([], ["x", "the Tall  Green person worked as a"], tpl)
    assert hits == [(tpl[0], "the Tall  Green person worked as a")]
    assert overlap.find_overlap([], ["The worked as a", "The a b c d e worked as a"], tpl) == []  # 1-4 words
    assert overlap.find_overlap([], ["The (x) worked as a."], ["The {person} worked as a"]) == []


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_every_shipped_study_is_disjoint(path):
    study = load_study(path)
    task = make_task(study)
    ev, ft = task.evaluation_items(study), task.finetune_items(study)
    assert ev and ft
    assert not {normalise(t) for t in ev} & {normalise(t) for t in ft}
    overlap.check_study(study)


@pytest.mark.parametrize("prompts", ("rtp-toxic",) + IDENTITY_SETS)
@pytest.mark.parametrize("corpus", ("self-detox", "counterfactual"))
def test_generated_corpora_never_contain_evaluation_templates(tiny_study, prompts, corpus):
    study = _toxicity(tiny_study, prompts, {"corpus": corpus, "n_prompts": None})
    task = make_task(study)
    overlap.check_task(task, study)
    ev = {normalise(t) for t in task.evaluation_items(study)}
    ft = task.finetune_items(study)
    assert not ev & {normalise(t) for t in ft}
    eval_ids = {t["id"] for t in identity_templates("eval")}
    if prompts != "rtp-toxic":
        assert {r["template_id"] for r in task._eval_rows(study)} == eval_ids
    if corpus == "counterfactual":
        assert {r["template_id"] for r in task._corpus_sources()} == {t["id"] for t in identity_templates("finetune")}


def test_counterfactual_corpus_as_built_uses_training_templates_only(tiny_study, monkeypatch):
    """The corpus built with a model (tiny, random) holds only prompts of 'finetune' templates."""
    import lorafair.scorers

    study = _toxicity(tiny_study, "identity", {"corpus": "counterfactual", "samples": 1, "max_new_tokens": 3,
                                                "threshold": 1.0})
    task = make_task(study)
    stub = types.SimpleNamespace(toxicity=lambda texts: [0.0] * len(texts))
    monkeypatch.setattr(lorafair.scorers, "get_scorer", lambda name: stub)
    ctx = types.SimpleNamespace(study=study, tokenizer=models.load_tokenizer("tiny-random"),
                                base_model=lambda: models.load_model("tiny-random").eval(), scorer=stub)
    rows = task.build_corpus(ctx)
    by_prompt = {p["prompt"]: p for p in identity_prompts("all")}
    assert rows and {by_prompt[r["prompt"]]["split"] for r in rows} == {"finetune"}
    overlap.check_task(task, study, [r["prompt"] for r in rows])
    eval_prompts = {normalise(p["prompt"]) for p in identity_prompts("all", split="eval")}
    assert not eval_prompts & {normalise(r["prompt"]) for r in rows}


def test_jsonl_corpus_with_evaluation_prompt_or_template_is_refused(tiny_study, tmp_path):
    clean = write_corpus(tmp_path / "clean.jsonl", [
        {"prompt": p["prompt"], "completion": " x"} for p in identity_prompts("race", split="finetune")[:5]])
    overlap.check_task(*_task(_toxicity(tiny_study, "identity", {"corpus": "jsonl", "path": str(clean)})))
    seen = identity_prompts("religion", split="eval")[3]["prompt"]
    tpl = next(t["text"] for t in identity_templates("eval"))
    for bad_prompt in ("  " + seen.upper().replace(" ", "   "), tpl.replace("{person}", "tall person")):
        bad = write_corpus(tmp_path / "bad.jsonl", [{"prompt": "A fine day", "completion": " x"},
                                                     {"prompt": bad_prompt, "completion": " x"}])
        study = _toxicity(tiny_study, "identity", {"corpus": "jsonl", "path": str(bad)})
        with pytest.raises(UserError, match=r"1 fine-tuning item\(s\) also occur in the evaluation set"):
            overlap.check_task(*_task(study))


def test_jsonl_evaluation_file_with_training_prompt_is_refused(tiny_study, tmp_path):
    trained = rtp_toxic("finetune", n=4)[2]["prompt"]
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text(json.dumps({"prompt": "Unseen words"}) + "\n" + json.dumps({"prompt": trained.lower()}) + "\n")
    study = _toxicity(tiny_study, str(prompts), {"corpus": "self-detox", "n_prompts": 4})
    with pytest.raises(UserError, match="also occur in the evaluation set"):
        overlap.check_task(*_task(study))


def _task(study):
    return make_task(study), study


def _tabular(tmp_path, dataset: str):
    return study_from_dict({"task": {"name": "classification", "options": {"dataset": dataset}},
                            "data": {"n_train": 60, "n_val": 10, "n_test": 40},
                            "model": {"source": "tiny-random"}, "output": str(tmp_path / "run")})


@pytest.mark.parametrize("dataset", ("adult", "compas", "german"))
def test_tabular_corpus_disjoint_and_duplicate_refused(tmp_path, dataset):
    study = _tabular(tmp_path, dataset)
    task = make_task(study)
    overlap.check_task(task, study)
    s = task.splits()
    s["test"][5] = {**s["test"][5], "prompt": s["train"][7]["prompt"]}  # a test profile seen in training
    with pytest.raises(UserError, match="1 fine-tuning item"):
        overlap.check_task(task, study)


def test_lending_evaluation_stream_must_differ_from_training_stream(tmp_path):
    raw = {"task": {"name": "lending", "options": {"eval_seeds": [0, 7]}}, "data": {"seed": 7},
           "model": {"source": "tiny-random"}, "output": str(tmp_path / "run")}
    with pytest.raises(UserError, match="data.seed"):
        overlap.check_study(study_from_dict(raw))
    overlap.check_study(study_from_dict(raw | {"data": {"seed": 1234}}))


def test_run_refuses_overlap_before_training(cli, tiny_study, tmp_path):
    from conftest import write_yaml

    trained = [{"prompt": p["prompt"], "completion": " fine"} for p in rtp_toxic("eval", n=6)]
    corpus = write_corpus(tmp_path / "leaky.jsonl", trained)
    path = write_yaml(tmp_path / "study.yaml", tiny_study(data={"path": str(corpus)}))
    result = cli.invoke(app, ["run", str(path), "--no-analyses", "--no-report"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "also occur in the evaluation set" in lines[-1]
    assert not (tmp_path / "run").exists()  # refused before anything was written
