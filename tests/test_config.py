"""Study loading: every bad input is a one-line UserError naming the file or key and what to do;
grid expansion of arms."""

from __future__ import annotations

import time

import pytest

from lorafair.arms import bank as arms_mod
from lorafair.models import sources as models
from lorafair.study.config import ALL_PROJECTIONS, Arm, expand_arms, load_study, study_from_dict
from lorafair.errors import UserError
from lorafair.study.context import check_model
from lorafair.study.runner import Runner
from lorafair.store.rundir import RunDir

from conftest import write_corpus, write_yaml


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg, repr(msg)
    return msg


@pytest.fixture(scope="module")
def tiny_model():
    return models.load_model("tiny-random")


# ---------------------------------------------------------------- YAML and schema


def test_good_study_loads(study_file):
    s = load_study(study_file())
    assert s.model.source == "tiny-random"
    assert s.training.max_steps == 4 and s.training.lr_search.enabled is False
    assert [a.name for a in expand_arms(s)] == ["base", "full", "lora-r2"]


def test_malformed_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nmodel:\n  source: tiny-random\ntraining: {max_steps: 4\narms: [base]\n")
    with pytest.raises(UserError) as e:
        load_study(f)
    msg = one_line(e)
    assert str(f) in msg and "malformed YAML" in msg
    # the flow mapping opened on line 4 is broken by the key on line 5
    assert "line 5" in msg


def test_missing_file(tmp_path):
    with pytest.raises(UserError) as e:
        load_study(tmp_path / "nope.yaml")
    assert "nope.yaml" in one_line(e)


def test_not_a_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- base\n- full\n")
    with pytest.raises(UserError) as e:
        load_study(f)
    assert str(f) in one_line(e)


@pytest.mark.parametrize("raw, typo, suggestion", [
    ({"trainig": {"max_steps": 2}}, "trainig", "training"),
    ({"arms": [{"type": "lora", "rnak": 2}]}, "rnak", "rank"),
    ({"training": {"lr_serch": {"enabled": False}}}, "lr_serch", "lr_search"),
    ({"evaluation": {"sample": 2}}, "sample", "samples"),
])
def test_unknown_key_names_closest(tmp_path, tiny_study, raw, typo, suggestion):
    f = write_yaml(tmp_path / "typo.yaml", tiny_study(**raw))
    with pytest.raises(UserError) as e:
        load_study(f)
    msg = one_line(e)
    assert str(f) in msg and repr(typo) in msg and f"did you mean {suggestion!r}" in msg


def test_unknown_key_line_number(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: x\nseeds: [0]\ntrainig:\n  max_steps: 2\n")
    with pytest.raises(UserError) as e:
        load_study(f)
    assert f"{f}:3:" in one_line(e)


@pytest.mark.parametrize("section, value, key, expected", [
    ("training", {"batch_size": "eight"}, "training.batch_size", "expected int"),
    ("training", {"max_steps": 2.5}, "training.max_steps", "expected int"),
    ("evaluation", {"greedy": "yes"}, "evaluation.greedy", "expected bool"),
    ("seeds", 0, "seeds", "expected a list"),
    ("seeds", [0, "one"], "seeds[1]", "expected int"),
    ("model", "tiny-random", "model", "expected a mapping"),
    ("training", {"lr_full": "fast"}, "training.lr_full", "expected float"),
])
def test_wrong_type(tmp_path, tiny_study, section, value, key, expected):
    f = write_yaml(tmp_path / "t.yaml", tiny_study(**{section: value}))
    with pytest.raises(UserError) as e:
        load_study(f)
    msg = one_line(e)
    assert str(f) in msg and key in msg and expected in msg


def test_yaml_exponent_written_as_string_is_a_float(tiny_study, tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string; the schema accepts it as a float
    f = tmp_path / "lr.yaml"
    write_yaml(f, tiny_study(training={"lr_lora": 1}))
    f.write_text(f.read_text().replace("lr_lora: 1", "lr_lora: 1e-4"))
    assert load_study(f).training.lr_lora == pytest.approx(1e-4)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("arm", [
    {"type": "lora", "rank": 0},
    {"type": "lora", "rank": -4},
    {"type": "lora", "ranks": [2, 0]},
])
def test_rank_not_positive(tiny_study, arm):
    with pytest.raises(UserError) as e:
        study_from_dict(tiny_study(arms=["base", arm]), "study.yaml")
    msg = one_line(e)
    assert "study.yaml" in msg and "arms[1]" in msg and "must be >= 1, got" in msg


def test_lora_without_rank(tiny_study):
    with pytest.raises(UserError) as e:
        study_from_dict(tiny_study(arms=[{"type": "lora"}]), "study.yaml")
    assert "needs a rank" in one_line(e)


@pytest.mark.parametrize("section, value, key", [
    ("training", {"lr_full": 0}, "training.lr_full"),
    ("training", {"lr_lora": -1e-4}, "training.lr_lora"),
    ("training", {"lr_search": {"full": [1e-4, 0.0, 1e-3]}}, "training.lr_search"),
    ("arms", [{"type": "full", "lr": 0}], "arms[0].lr"),
])
def test_learning_rate_not_positive(tiny_study, section, value, key):
    with pytest.raises(UserError) as e:
        study_from_dict(tiny_study(**{section: value}), "study.yaml")
    msg = one_line(e)
    assert "study.yaml" in msg and key in msg and "must be > 0" in msg


def test_empty_seed_list(tiny_study):
    with pytest.raises(UserError) as e:
        study_from_dict(tiny_study(seeds=[]), "study.yaml")
    msg = one_line(e)
    assert "study.yaml" in msg and "seeds" in msg and "seeds: is empty" in msg


def test_other_bad_values(tiny_study):
    for section, value, key in [("training", {"schedule": "steep"}, "training.schedule"),
                                ("arms", [{"type": "lora", "rank": 2, "variant": "vera"}], "variant"),
                                ("arms", [{"type": "lora", "rank": 2, "dropout": 1.0}], "dropout"),
                                ("arms", ["base", "partial"], "arms[1].type"),
                                ("arms", [], "arms"),
                                ("model", {"precision": "fp8"}, "model.precision")]:
        with pytest.raises(UserError) as e:
            study_from_dict(tiny_study(**{section: value}), "study.yaml")
        assert key in one_line(e), (section, value)


def test_duplicate_arm(tiny_study):
    with pytest.raises(UserError) as e:
        study_from_dict(tiny_study(arms=[{"type": "lora", "ranks": [2, 4]}, {"type": "lora", "rank": 4}]), "s.yaml")
    assert "'lora-r4' appears twice" in one_line(e)


# ---------------------------------------------------------------- against the model


def test_rank_too_large_for_a_target(tiny_model):
    shapes = arms_mod.linear_names(tiny_model)
    assert shapes["k_proj"] == (32, 64) and shapes["q_proj"] == (64, 64)  # 2 kv heads x 16
    arms_mod.check_arm(tiny_model, Arm("lora-r32", "lora", rank=32, alpha=64.0, target_modules=("k_proj",)))
    arms_mod.check_arm(tiny_model, Arm("lora-r64", "lora", rank=64, alpha=128.0, target_modules=("q_proj",)))
    with pytest.raises(UserError) as e:
        arms_mod.check_arm(tiny_model, Arm("lora-r33", "lora", rank=33, alpha=66.0,
                                           target_modules=tuple(ALL_PROJECTIONS)))
    msg = one_line(e)
    assert "lora-r33" in msg and "k_proj" in msg and "at most 32" in msg and "lower the rank" in msg


def test_unknown_target_module_lists_valid(tiny_model):
    with pytest.raises(UserError) as e:
        arms_mod.check_arm(tiny_model, Arm("lora-r2", "lora", rank=2, alpha=4.0, target_modules=("q_proj", "c_attn")))
    msg = one_line(e)
    assert "'c_attn'" in msg
    for name in ALL_PROJECTIONS:
        assert name in msg


def test_check_model_before_training(tiny_study):
    """The same checks on a study, on a weightless skeleton of its model, naming the study file."""
    check_model(study_from_dict(tiny_study(arms=[{"type": "lora", "ranks": [2, 32]}]), "s.yaml"))
    with pytest.raises(UserError) as e:
        check_model(study_from_dict(tiny_study(arms=[{"type": "lora", "ranks": [2, 40]}]), "s.yaml"))
    msg = one_line(e)
    assert msg.startswith("s.yaml: arms:") and "lora-r40" in msg and "at most 32" in msg
    bad = tiny_study(arms=[{"type": "lora", "rank": 2, "target_modules": ["q_proj", "query"]}])
    with pytest.raises(UserError) as e:
        check_model(study_from_dict(bad, "s.yaml"))
    assert "'query'" in one_line(e) and "down_proj" in str(e.value)


def test_unreachable_model_offline(offline, tiny_study):
    study = study_from_dict(tiny_study(model={"source": "some-org/does-not-exist"}), "s.yaml")
    t = time.perf_counter()
    for call in (lambda: models.load_tokenizer(study.model.source),
                 lambda: models.load_model(study.model.source),
                 lambda: check_model(study)):
        with pytest.raises(UserError) as e:
            call()
        msg = one_line(e)
        assert "some-org/does-not-exist" in msg and "model.source" in msg
        for name in models.PACKAGED:
            assert name in msg
    assert time.perf_counter() - t < 20


def test_missing_local_folder(tiny_study):
    with pytest.raises(UserError) as e:
        models.resolve("./no/such/model")
    assert "does not exist" in one_line(e)


# ---------------------------------------------------------------- data and output (through the runner)


def test_empty_corpus(tmp_path, tiny_study):
    empty = write_corpus(tmp_path / "empty.jsonl", [])
    study = study_from_dict(tiny_study(data={"path": str(empty)}), "s.yaml")
    with pytest.raises(UserError) as e:
        Runner(study, log=lambda m: None).run(analyses=False, report=False)
    msg = one_line(e)
    assert str(empty) in msg
    assert not list((tmp_path / "run").glob("*/seed-*"))


def test_output_not_writable(tmp_path, tiny_study):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError) as e:
        RunDir(blocker / "run").check_writable()
    msg = one_line(e)
    assert str(blocker / "run") in msg and "output:" in msg
    study = study_from_dict(tiny_study(output=str(blocker / "run")), "s.yaml")
    with pytest.raises(UserError) as e:
        Runner(study, log=lambda m: None).run(analyses=False, report=False)
    assert "cannot write" in one_line(e)
    assert blocker.read_text() == "not a folder"


# ---------------------------------------------------------------- grid expansion


def test_grid_expansion_names_and_alpha(tiny_study):
    s = study_from_dict(tiny_study(arms=["base", "full", {"type": "lora", "ranks": [1, 2]},
                                         {"type": "lora", "rank": 4, "variant": "rslora"},
                                         {"type": "lora", "rank": 4, "variant": "dora", "alpha": 3},
                                         {"type": "lora", "rank": 8, "target_modules": ["q_proj", "v_proj"]}],
                                   seeds=[0, 1]), "s.yaml")
    arms = expand_arms(s)
    assert [a.name for a in arms] == ["base", "full", "lora-r1", "lora-r2", "rslora-r4", "dora-r4", "lora-r8"]
    by = {a.name: a for a in arms}
    assert by["lora-r1"].alpha == 2.0 and by["lora-r2"].alpha == 4.0 and by["rslora-r4"].alpha == 8.0
    assert by["dora-r4"].alpha == 3.0
    assert by["lora-r2"].target_modules == tuple(ALL_PROJECTIONS)
    assert by["lora-r8"].target_modules == ("q_proj", "v_proj")
    cfgs = {n: arms_mod.lora_config(by[n]) for n in ("lora-r2", "rslora-r4", "dora-r4")}
    assert cfgs["lora-r2"].r == 2 and cfgs["lora-r2"].lora_alpha == 4.0
    assert not cfgs["lora-r2"].use_rslora and not cfgs["lora-r2"].use_dora
    assert cfgs["rslora-r4"].use_rslora and not cfgs["rslora-r4"].use_dora
    assert cfgs["dora-r4"].use_dora
    rd = RunDir("/x")
    folders = [rd.arm_dir(a.name, seed) for a in arms if a.type != "base" for seed in s.seeds]
    assert len(set(folders)) == 2 * 6
    assert str(rd.arm_dir("lora-r1", 1)) == "/x/lora-r1/seed-1"


@pytest.mark.parametrize("evaluation, where", [
    ({"margins": {"toxic_fraction": 0}}, "evaluation.margins.toxic_fraction"),
    ({"margins": {"toxic_fraction": "wide"}}, "evaluation.margins.toxic_fraction"),
    ({"min_group_size": 0}, "evaluation.min_group_size"),
    ({"min_group_templates": 0}, "evaluation.min_group_templates"),
    ({"min_group_templates": "ten"}, "evaluation.min_group_templates"),
    ({"min_group_events": -1}, "evaluation.min_group_events"),
    ({"min_group_events": "five"}, "evaluation.min_group_events"),
])
def test_margins_and_group_size_are_checked(tiny_study, evaluation, where):
    with pytest.raises(UserError) as e:
        study_from_dict(tiny_study(evaluation=evaluation), "s.yaml")
    assert where in str(e.value) and "\n" not in str(e.value)
    ok = study_from_dict(tiny_study(evaluation={"margins": {"accuracy_disparity": 0.05}}), "s.yaml")
    assert ok.evaluation.margins == {"accuracy_disparity": 0.05} and ok.evaluation.min_group_size == 30
    assert ok.evaluation.min_group_templates == 10 and ok.evaluation.min_group_events == 5.0
    off = study_from_dict(tiny_study(evaluation={"min_group_events": 0, "min_group_templates": 1}), "s.yaml")
    assert off.evaluation.min_group_events == 0.0 and off.evaluation.min_group_templates == 1
