"""A corpus of bad inputs: study keys, corpus files, model folders, study files, command-line misuse,
damaged run folders and a full disk. Every one must end in exit code 2 with one line on stderr that
names the key or file and says what to do, no traceback, and the output folder exactly as it was
before the command (absent when it was absent). `validate` and `run` must agree on every study.

The commands run in-process (typer's CliRunner); test_cli.py runs a real process.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from lorafair.cli import app

from conftest import CORPUS, tiny_study_dict, write_corpus, write_yaml

RUN = ["--no-analyses", "--no-report"]


def snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.rglob("*"))}


def refused(cli, args: list[str], expect: str, out: Path | None = None, what_to_do: bool = True,
            alone: bool = True) -> str:
    """Invoke the CLI; check exit 2, one line naming `expect`, no traceback, `out` unchanged.
    `alone`: the error is the only line on stderr (else: the last, after the run's progress lines)."""
    before = snapshot(out) if out is not None else None
    r = cli.invoke(app, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    assert r.stdout.strip() == "", r.stdout
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("warning: ")]
    assert lines[-1].startswith("error: ") and sum(ln.startswith("error") for ln in lines) == 1, r.stderr
    assert len(lines) == 1 or not alone, r.stderr
    line = lines[-1]
    assert expect in line, line
    if what_to_do:
        assert ";" in line, f"no advice after the problem: {line}"
    if out is not None:
        assert snapshot(out) == before, "the output folder changed"
    return line


# ---------------------------------------------------------------- study keys
# (id, sections merged into the tiny study, text the message must contain)

T, E, A = "training", "evaluation", "analyses"
STUDY_KEYS = [
    ("max-steps-zero", {T: {"max_steps": 0}}, "training.max_steps"),
    ("max-steps-negative", {T: {"max_steps": -3}}, "training.max_steps"),
    ("max-steps-huge", {T: {"max_steps": 1_000_000_000}}, "training.max_steps"),
    ("max-steps-word", {T: {"max_steps": "many"}}, "training.max_steps"),
    ("epochs-zero", {T: {"epochs": 0}}, "training.epochs"),
    ("epochs-negative", {T: {"epochs": -1}}, "training.epochs"),
    ("epochs-nan", {T: {"epochs": float("nan")}}, "training.epochs"),
    ("batch-size-zero", {T: {"batch_size": 0}}, "training.batch_size"),
    ("batch-size-float", {T: {"batch_size": 2.5}}, "training.batch_size"),
    ("grad-accum-zero", {T: {"grad_accum": 0}}, "training.grad_accum"),
    ("max-length-one", {T: {"max_length": 1}}, "training.max_length"),
    ("lr-full-zero", {T: {"lr_full": 0}}, "training.lr_full"),
    ("lr-lora-negative", {T: {"lr_lora": -1e-4}}, "training.lr_lora"),
    ("lr-lora-nan", {T: {"lr_lora": float("nan")}}, "training.lr_lora"),
    ("lr-lora-inf", {T: {"lr_lora": float("inf")}}, "training.lr_lora"),
    ("lr-lora-word", {T: {"lr_lora": "fast"}}, "training.lr_lora"),
    ("schedule-typo", {T: {"schedule": "cosin"}}, "did you mean 'cosine'"),
    ("warmup-above-one", {T: {"warmup_ratio": 2}}, "training.warmup_ratio"),
    ("warmup-negative", {T: {"warmup_ratio": -0.1}}, "training.warmup_ratio"),
    ("weight-decay-negative", {T: {"weight_decay": -1}}, "training.weight_decay"),
    ("grad-norm-negative", {T: {"max_grad_norm": -1}}, "training.max_grad_norm"),
    ("grad-norm-zero", {T: {"max_grad_norm": 0}}, "training.max_grad_norm"),
    ("eval-every-zero", {T: {"eval_every": 0}}, "training.eval_every"),
    ("checkpoint-every-zero", {T: {"checkpoint_every": 0}}, "training.checkpoint_every"),
    ("patience-zero", {T: {"early_stopping_patience": 0}}, "training.early_stopping_patience"),
    ("packing-word", {T: {"packing": "yes"}}, "training.packing"),
    ("search-full-empty", {T: {"lr_search": {"enabled": True, "full": []}}}, "training.lr_search.full"),
    ("search-lora-zero", {T: {"lr_search": {"enabled": True, "lora": [1e-3, 0]}}}, "training.lr_search.lora"),
    ("search-steps-zero", {T: {"lr_search": {"enabled": True, "steps": 0}}}, "training.lr_search.steps"),
    ("search-unknown-key", {T: {"lr_search": {"enabeld": False}}}, "did you mean 'enabled'"),
    ("training-unknown-key", {T: {"max_step": 3}}, "did you mean 'max_steps'"),
    ("samples-zero", {E: {"samples": 0}}, "evaluation.samples"),
    ("new-tokens-zero", {E: {"max_new_tokens": 0}}, "evaluation.max_new_tokens"),
    ("temperature-negative", {E: {"temperature": -1.0}}, "evaluation.temperature"),
    ("temperature-zero", {E: {"temperature": 0}}, "evaluation.temperature"),
    ("top-p-zero", {E: {"top_p": 0}}, "evaluation.top_p"),
    ("top-p-above-one", {E: {"top_p": 1.5}}, "evaluation.top_p"),
    ("n-prompts-zero", {E: {"n_prompts": 0}}, "evaluation.n_prompts"),
    ("eval-batch-zero", {E: {"batch_size": 0}}, "evaluation.batch_size"),
    ("bootstrap-zero", {E: {"bootstrap": 0}}, "evaluation.bootstrap"),
    ("threshold-two", {E: {"threshold": 2}}, "evaluation.threshold"),
    ("threshold-zero", {E: {"threshold": 0}}, "evaluation.threshold"),
    ("scorer-unknown", {E: {"scorer": "nope"}}, "evaluation.scorer"),
    ("scorer-hf-empty", {E: {"scorer": "hf:"}}, "evaluation.scorer"),
    ("scorer-empty", {E: {"scorer": ""}}, "evaluation.scorer"),
    ("probe-unknown", {E: {"probes": ["crows-pair"]}}, "did you mean 'crows-pairs'"),
    ("primary-typo", {E: {"primary": ["mean_scor"]}}, "evaluation.primary: no metric of task 'toxicity' is named "
                                                       "'mean_scor'; did you mean 'mean_score'"),
    ("primary-cf-off", {E: {"primary": ["cf_js"]}}, "evaluation.primary: cf_js (the counterfactual divergence) is "
                                                    "computed only with evaluation.counterfactual.enabled: true"),
    ("probe-items-zero", {E: {"probes": ["crows-pairs"], "n_probe_items": 0}}, "evaluation.n_probe_items"),
    ("greedy-word", {E: {"greedy": "maybe"}}, "evaluation.greedy"),
    ("n-prompts-too-many", {E: {"n_prompts": 10_000_000}}, "evaluation.n_prompts"),
    ("n-sequences-zero", {A: {"n_sequences": 0}}, "analyses.n_sequences"),
    ("analyses-batch-zero", {A: {"batch_size": 0}}, "analyses.batch_size"),
    ("energy-zero", {A: {"energy_threshold": 0}}, "analyses.energy_threshold"),
    ("energy-above-one", {A: {"energy_threshold": 1.5}}, "analyses.energy_threshold"),
    ("lens-examples-zero", {A: {"lens_examples": 0}}, "analyses.lens_examples"),
    ("rank-zero", {"arms": [{"type": "lora", "rank": 0}]}, "arms[0].rank"),
    ("ranks-empty", {"arms": [{"type": "lora", "ranks": []}]}, "arms[0].ranks"),
    ("ranks-negative", {"arms": [{"type": "lora", "ranks": [2, -1]}]}, "arms[0].ranks"),
    ("rank-too-large", {"arms": ["full", {"type": "lora", "rank": 40}]}, "at most 32"),
    ("alpha-negative", {"arms": [{"type": "lora", "rank": 2, "alpha": -2}]}, "arms[0].alpha"),
    ("dropout-one", {"arms": [{"type": "lora", "rank": 2, "dropout": 1}]}, "arms[0].dropout"),
    ("dropout-negative", {"arms": [{"type": "lora", "rank": 2, "dropout": -0.1}]}, "arms[0].dropout"),
    ("variant-unknown", {"arms": [{"type": "lora", "rank": 2, "variant": "qlora"}]}, "arms[0].variant"),
    ("targets-empty", {"arms": [{"type": "lora", "rank": 2, "target_modules": []}]}, "arms[0].target_modules"),
    ("targets-absent", {"arms": [{"type": "lora", "rank": 2, "target_modules": ["c_attn"]}]}, "'c_attn'"),
    ("arm-type-unknown", {"arms": [{"type": "half"}]}, "arms[0].type"),
    ("lora-without-rank", {"arms": [{"type": "lora"}]}, "arms[0]"),
    ("full-with-rank", {"arms": [{"type": "full", "rank": 4}]}, "arms[0]"),
    ("arm-lr-zero", {"arms": [{"type": "full", "lr": 0}]}, "arms[0].lr"),
    ("arm-duplicate", {"arms": ["full", "full"]}, "appears twice"),
    ("arms-empty", {"arms": []}, "arms"),
    ("arms-not-list", {"arms": "full"}, "arms"),
    ("arm-unknown-key", {"arms": [{"type": "lora", "rnak": 2}]}, "did you mean 'rank'"),
    ("precision-unknown", {"model": {"precision": "fp8"}}, "model.precision"),
    ("source-empty", {"model": {"source": ""}}, "model.source"),
    ("source-missing-folder", {"model": {"source": "./no/such/folder"}}, "model.source"),
    ("source-unreachable-hub", {"model": {"source": "some-org/does-not-exist"}}, "model.source"),
    ("trust-remote-word", {"model": {"trust_remote_code": "yes"}}, "model.trust_remote_code"),
    ("name-escapes", {"name": "../../x", "output": None}, "name"),
    ("name-slash", {"name": "a/b", "output": None}, "name"),
    ("name-empty", {"name": "", "output": None}, "name"),
    ("seeds-empty", {"seeds": []}, "seeds"),
    ("seeds-duplicate", {"seeds": [0, 0]}, "seeds"),
    ("seeds-negative", {"seeds": [-1]}, "seeds"),
    ("seeds-word", {"seeds": ["zero"]}, "seeds"),
    ("output-empty", {"output": ""}, "output"),
    ("top-level-typo", {"trainig": {"max_steps": 2}}, "did you mean 'training'"),
    ("task-unknown", {"task": {"name": "summarise"}}, "task.name"),
    ("task-option-unknown", {"task": {"name": "toxicity", "options": {"promts": "identity"}}}, "task.options"),
    ("prompt-file-missing", {"task": {"name": "toxicity", "options": {"prompts": "missing.jsonl"}}}, "missing.jsonl"),
    ("corpus-kind-unknown", {"data": {"corpus": "jsonlx"}}, "data.corpus"),
    ("corpus-path-missing", {"data": {"path": "nowhere.jsonl"}}, "nowhere.jsonl"),
    ("corpus-path-unset", {"data": {"path": None}}, "data.path"),
    ("val-fraction-one", {"data": {"val_fraction": 1}}, "data.val_fraction"),
    ("heldout-negative", {"data": {"heldout_fraction": -0.1}}, "data.heldout_fraction"),
    ("fractions-sum-one", {"data": {"val_fraction": 0.5, "heldout_fraction": 0.5}}, "data.val_fraction"),
    ("data-n-prompts-zero", {"data": {"corpus": "self-detox", "n_prompts": 0}}, "data.n_prompts"),
    ("data-n-prompts-too-many", {"data": {"corpus": "self-detox", "n_prompts": 10_000_000}}, "data.n_prompts"),
    ("data-samples-zero", {"data": {"corpus": "self-detox", "samples": 0}}, "data.samples"),
    ("data-threshold-above-one", {"data": {"corpus": "self-detox", "threshold": 1.5}}, "data.threshold"),
    ("data-top-p-zero", {"data": {"corpus": "self-detox", "top_p": 0}}, "data.top_p"),
    ("data-unknown-key", {"data": {"corpsu": "jsonl"}}, "did you mean 'corpus'"),
    ("no-val-with-search", {"data": {"val_fraction": 0}, T: {"lr_search": {"enabled": True}}}, "data.val_fraction"),
    ("no-val-with-patience", {"data": {"val_fraction": 0}, T: {"early_stopping_patience": 2}},
     "training.early_stopping_patience"),
    ("no-heldout-for-kl", {"data": {"val_fraction": 0, "heldout_fraction": 0}, A: {"kl": True}}, "analyses"),
    ("classification-dataset", {"task": {"name": "classification", "options": {"dataset": "adlt"}}, "data": {}},
     "did you mean 'adult'"),
    ("classification-n-train", {"task": {"name": "classification"}, "data": {"n_train": 0}}, "data.n_train"),
    ("lending-reference", {"task": {"name": "lending", "options": {"reference": "max-proft"}}, "data": {}},
     "task.options.reference"),
    ("lending-envs-zero", {"task": {"name": "lending", "options": {"n_envs": 0}}, "data": {}}, "task.options.n_envs"),
    ("sequential-max-seeds-one", {E: {"sequential": {"max_seeds": 1}}}, "evaluation.sequential.max_seeds"),
    ("sequential-step-zero", {E: {"sequential": {"seeds_per_look": 0}}}, "evaluation.sequential.seeds_per_look"),
    ("sequential-budget-negative", {E: {"sequential": {"budget_minutes": -5}}},
     "evaluation.sequential.budget_minutes"),
    ("sequential-key-typo", {E: {"sequential": {"max_seed": 4}}}, "did you mean 'max_seeds'"),
    ("lending-eval-seeds-empty", {"task": {"name": "lending", "options": {"eval_seeds": []}}, "data": {}},
     "task.options.eval_seeds"),
]


@pytest.mark.parametrize("name, sections, expect", STUDY_KEYS, ids=[c[0] for c in STUDY_KEYS])
def test_bad_study_key(cli, tiny_study, tmp_path, offline, monkeypatch, name, sections, expect):
    monkeypatch.chdir(tmp_path)  # a study without output writes under ./runs
    d = tiny_study(**sections)
    d = {k: v for k, v in d.items() if v is not None}
    if d["task"]["name"] in ("classification", "lending"):  # their data sections share no key with the tiny one
        d["data"] = sections["data"]
    path = write_yaml(tmp_path / f"{name}.yaml", d)
    for cmd in (["validate", path], ["run", path, "--no-report"]):
        refused(cli, cmd, expect, out=tmp_path / "run")
    assert not (tmp_path / "runs").exists()


def test_a_valid_study_passes_validate_and_run(cli, study_file, tmp_path):
    path = study_file()
    assert cli.invoke(app, ["validate", str(path)]).exit_code == 0
    r = cli.invoke(app, ["run", str(path), *RUN])
    assert r.exit_code == 0, r.output


def test_trust_remote_code_names_the_model(cli, study_file):
    r = cli.invoke(app, ["validate", str(study_file(model={"trust_remote_code": True}))])
    assert r.exit_code == 0, r.output
    assert "warning: model.trust_remote_code is true: loading 'tiny-random' runs the Python code" in r.stderr


# ---------------------------------------------------------------- corpus files


def _lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


GOOD = {"prompt": "p", "completion": " c"}
CORPUS_FILES = [
    ("empty", "", "no prompts found"),
    ("blank-lines", "\n\n  \n", "no prompts found"),
    ("not-json", _lines(GOOD, "{prompt: x}"), ":2: not valid JSON"),
    ("not-object", _lines(GOOD, [1, 2]), ":2: expected a JSON object"),
    ("no-prompt", _lines(GOOD, {"text": "x", "completion": "y"}), ":2: missing field 'prompt'"),
    ("no-completion", _lines(GOOD, {"prompt": "x"}), ":2: field 'completion'"),
    ("completion-number", _lines(GOOD, {"prompt": "x", "completion": 3}), ":2: field 'completion'"),
    ("prompt-empty", _lines(GOOD, {"prompt": " ", "completion": "y"}), ":2: field 'prompt'"),
    ("duplicate-ids", _lines({**GOOD, "id": "a"}, {**GOOD, "id": "a"}), ":2: id 'a'"),
    ("completion-blank", _lines(GOOD, {"prompt": "x", "completion": "  "}), ":2: field 'completion'"),
]


@pytest.mark.parametrize("name, text, expect", CORPUS_FILES, ids=[c[0] for c in CORPUS_FILES])
def test_bad_corpus_file(cli, study_file, tmp_path, name, text, expect):
    f = tmp_path / f"{name}.jsonl"
    f.write_text(text)
    path = study_file(data={"path": str(f)})
    for cmd in (["validate", path], ["run", path, *RUN]):
        assert str(f) in refused(cli, cmd, expect, out=tmp_path / "run")


def test_corpus_not_utf8(cli, study_file, tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(json.dumps({"prompt": "caf\u00e9", "completion": "ol\u00e9"}, ensure_ascii=False).encode("latin-1")
                  + b"\n")
    path = study_file(data={"path": str(f)})
    for cmd in (["validate", path], ["run", path, *RUN]):
        assert "not UTF-8" in refused(cli, cmd, str(f), out=tmp_path / "run")


def test_corpus_is_a_folder(cli, study_file, tmp_path):
    (tmp_path / "folder.jsonl").mkdir()
    path = study_file(data={"path": str(tmp_path / "folder.jsonl")})
    refused(cli, ["run", path, *RUN], "folder.jsonl", out=tmp_path / "run")


def test_prompt_file_not_utf8(cli, study_file, tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_bytes(b'{"prompt": "\xff\xfe"}\n')
    path = study_file(task={"name": "toxicity", "options": {"prompts": str(f)}})
    refused(cli, ["run", path, *RUN], str(f), out=tmp_path / "run")


# ---------------------------------------------------------------- model folders


def _tokenizer_into(folder: Path) -> None:
    from lorafair.models import sources as models

    models.load_tokenizer("tiny-random").save_pretrained(folder)


def _empty(folder: Path) -> None:
    pass


def _garbage_config(folder: Path) -> None:
    (folder / "config.json").write_text("this is not json")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)


def _unknown_model_type(folder: Path) -> None:
    _tokenizer_into(folder)
    _real_weights(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))


def _no_weights(folder: Path) -> None:
    from lorafair.models import sources as models

    _tokenizer_into(folder)
    models.tiny_config().save_pretrained(folder)


def _real_weights(folder: Path) -> None:
    from lorafair.models import sources as models

    models.load_model("tiny-random").save_pretrained(folder)


def _garbage_weights(folder: Path) -> None:
    _no_weights(folder)
    (folder / "model.safetensors").write_bytes(b"garbage, not a safetensors header")


def _truncated_weights(folder: Path) -> None:
    _tokenizer_into(folder)
    _real_weights(folder)
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])


def _no_tokenizer(folder: Path) -> None:
    _real_weights(folder)


MODEL_FOLDERS = [
    ("empty", _empty, "model.source"),
    ("garbage-config", _garbage_config, "model.source"),
    ("unknown-model-type", _unknown_model_type, "model.source"),
    ("no-weights", _no_weights, "holds no weights"),
    ("garbage-weights", _garbage_weights, "model.safetensors"),
    ("truncated-weights", _truncated_weights, "model.safetensors"),
    ("no-tokenizer", _no_tokenizer, "model.source"),
]


@pytest.mark.parametrize("name, make, expect", MODEL_FOLDERS, ids=[c[0] for c in MODEL_FOLDERS])
def test_bad_model_folder(cli, study_file, tmp_path, offline, name, make, expect):
    folder = tmp_path / "model"
    folder.mkdir()
    make(folder)
    path = study_file(model={"source": str(folder)})
    for cmd in (["validate", path], ["run", path, *RUN]):
        refused(cli, cmd, expect, out=tmp_path / "run")


# ---------------------------------------------------------------- study files


def test_study_file_missing(cli, tmp_path):
    refused(cli, ["run", tmp_path / "nope.yaml"], "nope.yaml")


def test_study_file_malformed(cli, tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("name: x\narms:\n  - base\n  - {type: lora, rank: 2\nseeds: [0]\n")
    refused(cli, ["validate", f], "line 5")


def test_study_file_not_utf8(cli, tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    refused(cli, ["run", f], "latin1.yaml")


def test_study_file_is_a_list(cli, tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- base\n- full\n")
    refused(cli, ["validate", f], "list.yaml")


def test_study_file_is_a_folder(cli, tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    refused(cli, ["validate", tmp_path / "dir.yaml"], "dir.yaml")


def test_study_file_section_not_a_mapping(cli, tmp_path, tiny_study):
    path = write_yaml(tmp_path / "s.yaml", {**tiny_study(), "training": [1, 2]})
    refused(cli, ["validate", path], "training")


# ---------------------------------------------------------------- command-line misuse


def test_compare_needs_two_folders(cli, tmp_path):
    refused(cli, ["compare", tmp_path], "compare", out=tmp_path)


def test_compare_non_run_folders(cli, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    refused(cli, ["compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "cmp"], "not a run directory",
            out=tmp_path)


def test_score_empty_text(cli):
    refused(cli, ["score", ""], "score")


def test_score_unknown_scorer(cli):
    refused(cli, ["score", "hello", "--scorer", "nope"], "nope")


def test_unknown_arm_selected(cli, study_file, tmp_path):
    refused(cli, ["run", study_file(), "--arms", "lora-r3", *RUN], "--arms", out=tmp_path / "run")


def test_until_decided_with_arms_or_one_seed(cli, study_file, tmp_path):
    refused(cli, ["run", study_file(seeds=[0, 1]), "--until-decided", "--arms", "full", *RUN], "--until-decided",
            out=tmp_path / "run")
    refused(cli, ["run", study_file(), "--until-decided", *RUN], "seeds", out=tmp_path / "run")
    refused(cli, ["run", study_file(seeds=[0, 1, 2], evaluation={"sequential": {"max_seeds": 2}}), "--until-decided",
                  *RUN], "evaluation.sequential.max_seeds", out=tmp_path / "run")


def test_report_on_a_plain_folder(cli, tmp_path):
    refused(cli, ["report", tmp_path], "not a run directory", out=tmp_path)


def test_report_on_a_missing_folder(cli, tmp_path):
    refused(cli, ["report", tmp_path / "nope"], "not a run directory")
    assert not (tmp_path / "nope").exists()


def test_analyze_on_a_plain_folder(cli, tmp_path):
    refused(cli, ["analyze", tmp_path], "not a run directory", out=tmp_path)


def test_models_prepare_unknown(cli):
    refused(cli, ["models", "--prepare", "gpt-9"], "gpt-9")


def test_output_is_a_file(cli, study_file, tmp_path):
    (tmp_path / "out.txt").write_text("keep me")
    path = study_file(output=str(tmp_path / "out.txt"))
    refused(cli, ["run", path, *RUN], "output", out=tmp_path)


def test_output_is_someone_elses_folder(cli, study_file, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (home / ".notes.tmp").write_text("a draft")
    path = study_file(output=str(home))
    refused(cli, ["run", path, *RUN], "not a lorafair run", out=home)


def test_output_under_a_file(cli, study_file, tmp_path):
    (tmp_path / "plain-file").write_text("x")
    path = study_file(output=str(tmp_path / "plain-file" / "run"))
    refused(cli, ["run", path, *RUN], "plain-file", out=tmp_path)


# ---------------------------------------------------------------- damaged run folders


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny run (study file, run folder), made once for this module."""
    from lorafair.study.config import study_from_dict
    from lorafair.study.runner import Runner

    root = tmp_path_factory.mktemp("finished")
    corpus = write_corpus(root / "corpus.jsonl", CORPUS)
    d = tiny_study_dict(root / "run", corpus)
    Runner(study_from_dict(d, "s.yaml"), log=lambda m: None).run(analyses=False, report=False)
    return write_yaml(root / "s.yaml", d), root / "run"


def _copy(finished, tmp_path) -> tuple[Path, Path]:
    study, run = finished
    out = tmp_path / "run"
    shutil.copytree(run, out)
    d = json.loads(json.dumps(__import__("yaml").safe_load(study.read_text())))
    d["output"] = str(out)
    return write_yaml(tmp_path / "s.yaml", d), out


def _garble(rel: str, data: bytes = b"\x00{ not json"):
    def f(out: Path) -> str:
        target = next(iter(sorted(out.glob(rel))))
        target.write_bytes(data)
        return target.name

    return f


def _state_checkpoint(out: Path) -> str:
    ck = out / "lora-r2" / "seed-0" / "checkpoint"
    ck.mkdir()
    (ck / "state.json").write_text("[1, 2")
    return "state.json"


DAMAGED = [
    ("done-json", _garble("lora-r2/seed-0/done.json")),
    ("done-json-not-utf8", _garble("full/seed-0/done.json", b"\xff\xfe\x00")),
    ("arm-config", _garble("lora-r2/seed-0/config.json")),
    ("eval-json", _garble("base/seed-0/eval/toxicity.json")),
    ("eval-parquet", _garble("full/seed-0/eval/toxicity.parquet", b"PAR1 broken")),
    ("train-log", _garble("full/seed-0/train_log.jsonl")),
    ("val-curve", _garble("lora-r2/seed-0/val_curve.json")),
    ("corpus-cache", _garble("data/*.jsonl")),
    ("adapter-weights", _garble("lora-r2/seed-0/adapter/adapter_model.safetensors", b"garbage")),
    ("full-weights", _garble("full/seed-0/model/model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}")),
    ("compare-json", _garble("compare.json")),
    ("study-json", _garble("study.json")),
    ("checkpoint-state", _state_checkpoint),
]


@pytest.mark.parametrize("name, damage", DAMAGED, ids=[c[0] for c in DAMAGED])
def test_damaged_run_folder(cli, finished, tmp_path, name, damage):
    study, out = _copy(finished, tmp_path)
    bad = damage(out)
    for cmd in (["validate", study], ["run", study, *RUN]):
        line = refused(cli, cmd, bad, out=out)
        assert "delete it" in line


def test_locked_run_folder(cli, finished, tmp_path):
    from lorafair.store.rundir import RunDir

    study, out = _copy(finished, tmp_path)
    with RunDir(out).lock():
        before = snapshot(out)
        for cmd in (["run", study, *RUN], ["report", out], ["analyze", out]):
            refused(cli, cmd, "another lorafair process")
        assert snapshot(out) == before


# ---------------------------------------------------------------- a full disk


def _full_disk(monkeypatch, after: int = 0):
    """Every atomic write after the first `after` fails as on a full disk."""
    from lorafair.store import rundir as store

    real, calls = store.write_via_temp, []

    def full(path, write):
        calls.append(path)
        if len(calls) > after:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(store, "write_via_temp", full)


@pytest.mark.parametrize("after", [0, 3])
def test_full_disk_on_a_new_run(cli, study_file, tmp_path, monkeypatch, after):
    path = study_file()
    _full_disk(monkeypatch, after)
    line = refused(cli, ["run", path, *RUN], "No space left on device", out=tmp_path / "run", alone=after == 0)
    assert "free space" in line
    assert not (tmp_path / "run").exists()


def test_full_disk_on_a_finished_run(cli, finished, tmp_path, monkeypatch):
    study, out = _copy(finished, tmp_path)
    _full_disk(monkeypatch)
    refused(cli, ["run", study, *RUN, "--force"], "No space left on device", out=out)


def test_full_disk_while_reporting(cli, finished, tmp_path, monkeypatch):
    study, out = _copy(finished, tmp_path)
    _full_disk(monkeypatch)
    refused(cli, ["report", out], "No space left on device", out=out)


# ---------------------------------------------------------------- interruption


def test_ctrl_c_is_one_line_and_exit_130(cli, study_file, monkeypatch):
    from lorafair.study import runner

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.Runner, "run", interrupted)
    r = cli.invoke(app, ["run", str(study_file()), *RUN])
    assert r.exit_code == 130
    assert r.stderr.strip() == "interrupted; run the same command to resume"

