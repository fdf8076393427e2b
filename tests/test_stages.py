"""The table of stages and the cache keys: every entry resolves, every analysis has a plot and a
loader, flags are study keys, and every input of every cache key changes the key."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from lorafair.report.load import Run
from lorafair.store import keys
from lorafair.study import stages
from lorafair.study.config import study_from_dict


def test_every_stage_resolves_and_names_known_stages():
    names = [s.name for s in stages.STAGES]
    assert len(names) == len(set(names))
    for s in stages.STAGES:
        assert callable(stages.resolve(s.fn)), s.name
        for dep in s.inputs + s.after:
            assert dep in names and names.index(dep) < names.index(s.name), (s.name, dep)
        if s.key is not None:
            assert callable(getattr(keys, s.key)), s.key


def test_every_analysis_has_a_plot_and_a_loader():
    fields = {f.name for f in dataclasses.fields(Run)}
    for s in stages.analyses() + stages.with_results():
        assert s.plot and callable(stages.resolve(s.plot)), f"{s.name}: no plot in the table"
        assert s.load and callable(stages.resolve(s.load)), f"{s.name}: no loader in the table"
        assert s.name in fields or s.figure, f"{s.name}: the report neither reads nor draws it"


def test_the_contract_fails_for_an_entry_without_a_plot(monkeypatch):
    bad = stages.Stage("new", "analyses.kl", "lorafair.study.analyses:kl", part_of="analyses",
                       load="lorafair.report.load:read_kl")
    monkeypatch.setattr(stages, "STAGES", stages.STAGES + (bad,))
    with pytest.raises(AssertionError, match="no plot"):
        test_every_analysis_has_a_plot_and_a_loader()


def test_flags_are_study_keys_and_turn_stages_off(tiny_study):
    study = study_from_dict(tiny_study(analyses={"kl": False, "lens": True, "weights": True}))
    for s in stages.STAGES:
        stages.flag_value(study, s.flag)  # every flag is a key of the study
    on = {s.name for s in stages.STAGES if stages.is_on(s, study)}
    assert "kl" not in on and {"lens", "weights", "analyses", "train"} <= on
    assert "counterfactual" not in on  # off by default
    off = {s.name for s in stages.STAGES if stages.is_on(s, study, analyses=False, report=False)}
    assert not off & {"analyses", "kl", "lens", "weights", "report"} and "compare" in off


def test_stage_functions_take_the_session_the_request_and_their_inputs():
    for s in stages.steps():
        params = list(inspect.signature(stages.resolve(s.fn)).parameters)
        assert params[:2] == ["session", "request"], (s.name, params)
        assert set(params[2:]) == set(s.inputs), (s.name, params)


# ---------------------------------------------------------------- cache keys

ARGS = {
    "corpus_key": dict(task_key={"corpus": "jsonl", "path": "a"}, source="m", model_hash="h", scorer="s"),
    "train_key": dict(arm={"name": "lora-r2", "rank": 2}, seed=0, training={"lr": 1}, source="m", model_hash="h",
                      corpus_hash="c"),
    "search_key": dict(arm={"name": "full"}, search={"steps": 2}, training={"lr": 1}, source="m", model_hash="h",
                       corpus_hash="c"),
    "checkpoint_key": dict(train="t", lr=1e-3),
    "evaluation_key": dict(train="t", model_hash="h", evaluation={"samples": 2}, task_key={"n": 1}),
    "counterfactual_key": dict(train="t", model_hash="h", counterfactual={"positions": 8}, source="m"),
}


def _changed(v):
    if isinstance(v, dict):
        return {**v, "extra": 1}
    if isinstance(v, str):
        return v + "x"
    return v + 1 if isinstance(v, int) else v * 2


def test_every_key_function_is_covered():
    public = {n for n, f in vars(keys).items() if n.endswith("_key") and inspect.isfunction(f)}
    assert public == set(ARGS)
    for name, args in ARGS.items():
        assert set(inspect.signature(getattr(keys, name)).parameters) == set(args), name


@pytest.mark.parametrize("name", sorted(ARGS))
@pytest.mark.parametrize("trained", [True, False])
def test_changing_any_input_changes_the_key(name, trained):
    """A trained arm's keys name its train key, which holds the model hash; the base arm's name the
    model hash itself: either way every input counts."""
    fn, args = getattr(keys, name), ARGS[name]
    if "train" in args and not trained and name != "checkpoint_key":
        args = {**args, "train": None}
    k = fn(**args)
    assert fn(**args) == k  # stable
    for arg in args:
        if arg == "train" and args[arg] is None:
            assert fn(**{**args, arg: "t"}) != k
            continue
        if arg == "model_hash" and args.get("train") is not None:
            h = keys.train_key(**{**ARGS["train_key"], "model_hash": "other"})
            assert h != keys.train_key(**ARGS["train_key"])  # reaches these keys through the train key
            continue
        assert fn(**{**args, arg: _changed(args[arg])}) != k, (name, arg)


@pytest.mark.parametrize("name", ["evaluation_key", "counterfactual_key"])
def test_the_base_arm_keys_name_the_model_hash(name):
    fn, args = getattr(keys, name), {**ARGS[name], "train": None}
    assert fn(**args) != fn(**{**args, "model_hash": "other"})
