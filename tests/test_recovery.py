"""Recovery as the messages advise, YAML that cannot take the machine down, margins that must mean
something, and a real full disk: each case is run as a user would, through the command line.

- Deleting or damaging any output of a finished arm, then running the same command again, redoes
  that arm and ends with a complete folder (the "delete it and run the same command again" advice
  of a damaged file, followed).
- Study files with anchors or aliases, duplicate keys, control characters in keys, or sizes no
  study needs are refused in one line within seconds.
- A full disk (a small tmpfs, mounted where the tests run as root) ends in one line and exit 2,
  leaves nothing half written, and the same command resumes once there is space.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lorafair.cli import app

from conftest import write_yaml
from test_bad_input import RUN, _copy, _garble, finished, refused  # noqa: F401 - `finished` is a fixture

# ---------------------------------------------------------------- following the advice


def _delete(rel: str):
    def f(out: Path) -> Path:
        target = out / rel
        target.unlink()
        return target

    return f


DELETED = [
    ("train-log", _delete("full/seed-0/train_log.jsonl")),
    ("arm-config", _delete("lora-r2/seed-0/config.json")),
    ("val-curve", _delete("full/seed-0/val_curve.json")),
    ("val-curve-empty-mapping", _garble("lora-r2/seed-0/val_curve.json", b"{}")),
    ("arm-config-a-list", _garble("full/seed-0/config.json", b"[]")),
    ("adapter-config", _delete("lora-r2/seed-0/adapter/adapter_config.json")),
    ("adapter-weights", _delete("lora-r2/seed-0/adapter/adapter_model.safetensors")),
    ("full-weights", _delete("full/seed-0/model/model.safetensors")),
    ("full-model-config", _delete("full/seed-0/model/config.json")),
    ("eval-summary-a-list", _garble("lora-r2/seed-0/eval/toxicity.json", b"[]")),
    ("eval-rows", _delete("full/seed-0/eval/toxicity.parquet")),
]


def _complete(out: Path) -> None:
    for arm, weights in (("full", ("model/model.safetensors", "model/config.json")),
                         ("lora-r2", ("adapter/adapter_model.safetensors", "adapter/adapter_config.json"))):
        d = out / arm / "seed-0"
        for name in ("config.json", "val_curve.json", "train_log.jsonl", "done.json", *weights):
            assert (d / name).is_file(), d / name
        assert isinstance(json.loads((d / "config.json").read_text()), dict)
        assert isinstance(json.loads((d / "val_curve.json").read_text()), list)
        assert isinstance(json.loads((d / "eval" / "toxicity.json").read_text()), dict)
        assert (d / "eval" / "toxicity.parquet").is_file()
    assert (out / "compare.json").is_file()


@pytest.mark.parametrize("name, damage", DELETED, ids=[c[0] for c in DELETED])
def test_a_lost_output_is_redone_by_running_again(cli, finished, tmp_path, name, damage):
    study, out = _copy(finished, tmp_path)
    damage(out)
    r = cli.invoke(app, ["run", str(study), *RUN])
    assert r.exit_code == 0, r.output
    _complete(out)


@pytest.mark.parametrize("rel", ["lora-r2/seed-0/adapter/adapter_model.safetensors",
                                 "full/seed-0/model/model.safetensors", "full/seed-0/config.json"])
def test_damaged_file_advice_followed_recovers(cli, finished, tmp_path, rel):
    study, out = _copy(finished, tmp_path)
    (out / rel).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    line = refused(cli, ["run", study, *RUN], Path(rel).name, out=out)
    assert "delete it and run the same command again" in line
    (out / rel).unlink()  # as advised
    r = cli.invoke(app, ["run", str(study), *RUN])
    assert r.exit_code == 0, r.output
    _complete(out)


# ---------------------------------------------------------------- safe YAML


def _study_text(tiny_study) -> str:
    import yaml

    return yaml.safe_dump(tiny_study(), sort_keys=False)


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


@pytest.mark.parametrize("name, text, expect", [
    ("billion-laughs", LAUGHS, "anchors and aliases"),
    ("self-reference", "name: &n [*n]\n", "anchors and aliases"),
    ("merge-key", "base: &b {max_steps: 3}\ntraining:\n  <<: *b\n", "anchors and aliases"),
    ("deep-nesting", "name: " + "[" * 200 + "]" * 200 + "\n", "nested more than"),
], ids=lambda x: x if isinstance(x, str) and len(x) < 20 else "")
def test_hostile_yaml_is_refused_quickly(cli, tmp_path, name, text, expect):
    f = tmp_path / "hostile.yaml"
    f.write_text(text)
    for cmd in ("validate", "run"):
        t = time.perf_counter()
        refused(cli, [cmd, f], expect)
        assert time.perf_counter() - t < 10


def test_duplicate_section_is_refused(cli, tmp_path, tiny_study):
    text = _study_text(tiny_study) + "training:\n  max_steps: 2\n"
    f = tmp_path / "dup.yaml"
    f.write_text(text)
    line = refused(cli, ["validate", f], "'training' appears twice")
    assert "first at line" in line


def test_key_with_a_line_break_is_one_line(cli, tmp_path, tiny_study):
    f = tmp_path / "nl.yaml"
    f.write_text(_study_text(tiny_study) + '"max\\nsteps": 3\n')
    refused(cli, ["validate", f], "control character")


@pytest.mark.parametrize("n, expect", [(5_000, "entries in one list"), (100_000, "bytes")])
def test_huge_seed_lists_are_refused_quickly(cli, tmp_path, tiny_study, n, expect):
    d = tiny_study()
    d["seeds"] = list(range(n))
    f = write_yaml(tmp_path / "seeds.yaml", d)
    t = time.perf_counter()
    refused(cli, ["validate", f], expect)
    assert time.perf_counter() - t < 10


# ---------------------------------------------------------------- margins that mean something


@pytest.mark.parametrize("margins, expect", [
    ({"no_such_metric": 0.1}, "no_such_metric"),
    ({"toxic_fraction": float("inf")}, "finite"),
    ({"toxic_fraction": float("nan")}, "finite"),
])
def test_margin_must_name_a_metric_and_be_finite(cli, study_file, margins, expect):
    path = study_file(evaluation={"margins": margins})
    for cmd in ("validate", "run"):
        refused(cli, [cmd, path] + (RUN if cmd == "run" else []), expect)


def test_margin_by_metric_prefix_and_counterfactual_margin_are_accepted(cli, study_file):
    path = study_file(evaluation={"margins": {"toxic_fraction": 0.05, "cf_js": 0.01}})
    r = cli.invoke(app, ["validate", str(path)])
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------- a real full disk


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `where`; the reason it cannot be done, or None."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root and mount(8) to make a small file system"
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True)
    return None if r.returncode == 0 else f"mount refused here: {r.stderr.strip()}"


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "small"
    why = _mount_tmpfs(where, "6m")
    if why is not None and os.environ.get("CI"):
        pytest.fail(f"the full-disk test must run in CI: {why}")
    if why is not None:
        pytest.skip(why)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_for_real_then_resume(cli, tmp_path, tiny_study, small_disk):
    d = tiny_study()
    d["output"] = str(small_disk / "run")
    study = write_yaml(tmp_path / "s.yaml", d)
    line = refused(cli, ["run", study, *RUN], "No space left on device", alone=False)
    assert "free space" in line and "run the same command again" in line
    assert f"{small_disk / 'run'} (" in line and "MB free there now" in line
    leftovers = [p for p in (small_disk / "run").rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    for done in (small_disk / "run").rglob("done.json"):  # whatever finished is whole
        assert json.loads(done.read_text())["hash"]
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    r = cli.invoke(app, ["run", str(study), *RUN])
    assert r.exit_code == 0, r.output
    _complete(small_disk / "run")


# ---------------------------------------------------------------- model folders that would change a verdict


def _saved(folder: Path) -> None:
    from lorafair.models import sources as models

    models.load_tokenizer("tiny-random").save_pretrained(folder)
    models.load_model("tiny-random").save_pretrained(folder)


def _mismatched_config(folder: Path) -> None:
    _saved(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (folder / "config.json").write_text(json.dumps(cfg))


def _pickled_only(folder: Path) -> None:
    import torch

    _saved(folder)
    w = folder / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(w)), folder / "pytorch_model.bin")
    w.unlink()


def _tensor_missing(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    _saved(folder)
    w = folder / "model.safetensors"
    tensors = load_file(str(w))
    tensors.pop("model.layers.1.mlp.down_proj.weight")
    save_file(tensors, str(w), metadata={"format": "pt"})


def _all_nan(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    _saved(folder)
    w = folder / "model.safetensors"
    tensors = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(w)).items()}
    save_file(tensors, str(w), metadata={"format": "pt"})


@pytest.mark.parametrize("name, make, expect", [
    ("config-shapes-mismatch", _mismatched_config, "does not belong to these weights"),
    ("pickled-weights-only", _pickled_only, "pickled weights"),
    ("one-tensor-missing", _tensor_missing, "model.layers.1.mlp.down_proj.weight"),
], ids=lambda x: x if isinstance(x, str) and "-" in x else "")
def test_model_folder_problems_are_found_before_anything_runs(cli, study_file, tmp_path, offline, name, make,
                                                              expect):
    folder = tmp_path / "model"
    folder.mkdir()
    make(folder)
    path = study_file(model={"source": str(folder)})
    for cmd in (["validate", path], ["run", path, *RUN]):
        refused(cli, cmd, expect, out=tmp_path / "run")


def test_weights_that_are_not_finite_are_refused_at_load(cli, study_file, tmp_path, offline):
    folder = tmp_path / "model"
    folder.mkdir()
    _all_nan(folder)
    path = study_file(model={"source": str(folder)})
    refused(cli, ["run", path, *RUN], "NaN or infinity", alone=False)


# ---------------------------------------------------------------- validate finds what run would find


@pytest.mark.parametrize("evaluation, expect", [
    ({"second_scorer": "no-such-scorer"}, "evaluation.second_scorer"),
    ({"second_scorer": "hf:/no/such/folder"}, "evaluation.second_scorer"),
])
def test_second_scorer_is_checked_before_training(cli, study_file, tmp_path, offline, evaluation, expect):
    path = study_file(evaluation=evaluation)
    for cmd in (["validate", path], ["run", path, *RUN]):
        refused(cli, cmd, expect, out=tmp_path / "run")


def test_a_ray_address_nobody_listens_on_is_refused_at_once(cli, study_file, tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = study_file(execution={"backend": "ray", "address": f"127.0.0.1:{port}"})
    t = time.perf_counter()
    for cmd in (["validate", path], ["run", path, *RUN]):
        refused(cli, cmd, "execution.address", out=tmp_path / "run")
    assert time.perf_counter() - t < 20


def test_a_read_only_output_folder_is_refused_before_anything_runs(cli, study_file, tmp_path):
    ro = tmp_path / "ro"
    why = _mount_tmpfs(ro, "1m")
    if why is not None:
        pytest.skip(why)
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        path = study_file(output=str(ro / "run"))
        for cmd in (["validate", path], ["run", path, *RUN]):
            refused(cli, cmd, "cannot write")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_a_superseded_corpus_is_removed_once_its_replacement_is_built(cli, finished, tmp_path):
    import yaml

    study, out = _copy(finished, tmp_path)
    (old,) = sorted((out / "data").glob("*.jsonl"))
    d = yaml.safe_load(study.read_text())
    d["data"]["val_fraction"] = 0.25  # the same corpus split otherwise: the cache key changes
    corpus = Path(d["data"]["path"])
    corpus.with_name("corpus2.jsonl").write_text(corpus.read_text() + json.dumps(
        {"prompt": "Note 99: the neighbours said that", "completion": " they liked the well."}) + "\n")
    d["data"]["path"] = str(corpus.with_name("corpus2.jsonl"))
    write_yaml(study, d)
    r = cli.invoke(app, ["run", str(study), *RUN])
    assert r.exit_code == 0, r.output
    files = sorted((out / "data").glob("*.jsonl"))
    assert len(files) == 1 and files[0] != old


@pytest.mark.parametrize("rel, expect", [
    ("lora-r2/seed-0/adapter/adapter_model.safetensors", "lora-r2 seed 0 (adapter/ holds no safetensors weights)"),
    ("full/seed-0/eval/toxicity.json", "full seed 0"),
])
def test_report_names_what_is_missing_or_damaged(cli, finished, tmp_path, rel, expect):
    study, out = _copy(finished, tmp_path)
    (out / rel).unlink()
    r = cli.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    warning = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and expect in warning[0] and "run `lorafair run`" in warning[0], r.output


def test_a_weight_byte_changed_with_size_and_mtime_restored_changes_the_model_hash(tmp_path):
    from lorafair.models import sources as models

    folder = tmp_path / "model"
    folder.mkdir()
    _saved(folder)
    before = models.model_hash(str(folder))
    w = folder / "model.safetensors"
    st = w.stat()
    data = bytearray(w.read_bytes())
    data[-1] ^= 0x01  # one byte of the last tensor
    time.sleep(0.01)
    w.write_bytes(bytes(data))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert w.stat().st_size == st.st_size and w.stat().st_mtime_ns == st.st_mtime_ns
    assert models.model_hash(str(folder)) != before
