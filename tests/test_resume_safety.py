"""What a run resumes or reuses is keyed by what it depends on: a checkpoint written for other
settings is discarded, an edited corpus or replaced model weights retrain the arms, a run folder
never runs code, and one process at a time works on an output folder."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorafair.models import sources as models
from lorafair.cli import app
from lorafair.study.config import study_from_dict
from lorafair.study.runner import Runner
from lorafair.store.rundir import RunDir, read_json

from conftest import CORPUS, tiny_study_dict, write_corpus, write_yaml

REPO = Path(__file__).resolve().parents[1]
LORA_ONLY = {"arms": [{"type": "lora", "rank": 2}], "training": {"max_steps": 6, "checkpoint_every": 2,
                                                                  "eval_every": 3, "warmup_ratio": 0.0}}


class Killed(BaseException):
    """Stands for the process being interrupted: like KeyboardInterrupt, no job runner catches it."""


def kill_at(step: int):
    """A progress factory whose callback stops training after `step` (checkpoint at step - 1 or before)."""

    def factory(arm, seed):
        def on_step(row):
            if row["step"] == step:
                raise Killed

        return on_step

    return factory


def run(d: dict, logs: list | None = None, progress=None) -> Runner:
    r = Runner(study_from_dict(d, "s.yaml"), log=(logs.append if logs is not None else lambda m: None),
               progress=progress)
    r.run(analyses=False, report=False)
    return r


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "lora-r2" / "seed-0" / "adapter" / "adapter_model.safetensors")


def test_stale_checkpoint_after_an_lr_change_is_discarded(tmp_path, corpus_file):
    old = tiny_study_dict(tmp_path / "run", corpus_file, **LORA_ONLY)
    with pytest.raises(Killed):
        run(old, progress=kill_at(5))
    state = read_json(tmp_path / "run" / "lora-r2" / "seed-0" / "checkpoint" / "state.json")
    assert state["step"] == 4
    new = tiny_study_dict(tmp_path / "run", corpus_file, **{**LORA_ONLY, "training": {
        **LORA_ONLY["training"], "lr_lora": 3e-2}})
    logs: list[str] = []
    run(new, logs)
    assert any("checkpoint written for other settings" in m and "discarded" in m for m in logs), logs
    run({**new, "output": str(tmp_path / "clean")})
    got, want = adapter(tmp_path / "run"), adapter(tmp_path / "clean")
    assert got.keys() == want.keys()
    for k in got:
        assert torch.equal(got[k], want[k]), k
    done = read_json(tmp_path / "run" / "lora-r2" / "seed-0" / "done.json")
    assert done["lr"] == 3e-2 and len(read_json(tmp_path / "run" / "lora-r2" / "seed-0" / "val_curve.json")) == 2


def test_the_same_settings_resume_their_checkpoint(tmp_path, corpus_file):
    d = tiny_study_dict(tmp_path / "run", corpus_file, **LORA_ONLY)
    with pytest.raises(Killed):
        run(d, progress=kill_at(5))
    logs: list[str] = []
    run(d, logs)
    assert not any("discarded" in m for m in logs), logs
    log = [r["step"] for r in RunDir(tmp_path / "run").train_log("lora-r2", 0)]
    assert log == [1, 2, 3, 4, 5, 6]


def test_crafted_pickle_in_a_run_folder_is_never_executed(tmp_path, corpus_file):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    d = tiny_study_dict(tmp_path / "run", corpus_file, **LORA_ONLY)
    ck = tmp_path / "run" / "lora-r2" / "seed-0" / "checkpoint"
    ck.mkdir(parents=True)
    (tmp_path / "run" / "study.yaml").write_text("name: earlier\n")  # someone else's run folder
    (ck / "state.pt").write_bytes(pickle.dumps({"step": Payload()}))
    torch.save({"params": Payload()}, ck / "other.pt")
    logs: list[str] = []
    run(d, logs)
    assert not marker.exists()
    assert any("old or incomplete format, discarded" in m for m in logs), logs
    assert read_json(tmp_path / "run" / "lora-r2" / "seed-0" / "done.json")["steps"] == 6
    assert not ck.exists()


def test_edited_corpus_retrains(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    d = tiny_study_dict(tmp_path / "run", corpus, **LORA_ONLY)
    first = run(d)
    h1 = read_json(tmp_path / "run" / "lora-r2" / "seed-0" / "done.json")["hash"]
    write_corpus(corpus, [{**r, "completion": r["completion"].upper()} for r in CORPUS])
    logs: list[str] = []
    second = run(d, logs)
    assert second.corpus_hash != first.corpus_hash
    assert not any("finished earlier" in m for m in logs), logs
    assert read_json(tmp_path / "run" / "lora-r2" / "seed-0" / "done.json")["hash"] != h1
    assert len(list((tmp_path / "run" / "data").glob("*.jsonl"))) == 1  # the superseded corpus is removed


def _model_folder(folder: Path, seed: int) -> Path:
    models.load_model("tiny-random", seed=seed).save_pretrained(folder)
    models.load_tokenizer("tiny-random").save_pretrained(folder)
    return folder


def test_replaced_model_weights_retrain(tmp_path, corpus_file):
    folder = _model_folder(tmp_path / "model", seed=0)
    d = tiny_study_dict(tmp_path / "run", corpus_file, model={"source": str(folder)},
                        **{**LORA_ONLY, "arms": ["base", {"type": "lora", "rank": 2}]})
    run(d)
    base_eval = read_json(tmp_path / "run" / "base" / "seed-0" / "eval" / "toxicity.json")["hash"]
    h1 = read_json(tmp_path / "run" / "lora-r2" / "seed-0" / "done.json")["hash"]
    logs: list[str] = []
    run(d, logs)
    assert any("finished earlier" in m for m in logs)  # unchanged: skipped
    _model_folder(folder, seed=1)  # new weights, same file names
    logs.clear()
    run(d, logs)
    assert not any("finished earlier" in m for m in logs), logs
    assert read_json(tmp_path / "run" / "lora-r2" / "seed-0" / "done.json")["hash"] != h1
    assert read_json(tmp_path / "run" / "base" / "seed-0" / "eval" / "toxicity.json")["hash"] != base_eval


def test_folder_hash_reads_content_only_when_files_change(tmp_path, monkeypatch):
    from lorafair.store import rundir as store

    monkeypatch.setenv("LORAFAIR_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"one")
    h = models.model_hash(str(folder))
    reads = []
    monkeypatch.setattr(store, "file_hash", lambda p, n=16: reads.append(p) or "x")
    assert models.model_hash(str(folder)) == h and reads == []
    (folder / "model.safetensors").write_bytes(b"two!")
    assert models.model_hash(str(folder)) != h and reads


def test_study_hash_ignores_the_output_folder(tmp_path):
    a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    a.write_study({"name": "x", "output": "a"})
    b.write_study({"name": "x", "output": "b"})
    assert read_json(tmp_path / "a" / "study.json")["hash"] == read_json(tmp_path / "b" / "study.json")["hash"]


# ---------------------------------------------------------------- one process per output folder


def test_a_second_run_on_a_locked_folder_fails_in_one_line(cli, study_file, tmp_path):
    path = study_file()
    with RunDir(tmp_path / "run").lock():
        r = cli.invoke(app, ["run", str(path), "--no-analyses", "--no-report"])
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert "\n" not in line and f"pid {os.getpid()}" in line and str(tmp_path / "run") in line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_a_stale_lock_and_leftover_temporaries_are_cleared(tmp_path, corpus_file):
    out = tmp_path / "run"
    (out / "lora-r2" / "seed-0").mkdir(parents=True)
    (out / "study.yaml").write_text("name: earlier\n")
    (out / ".lock").write_text("999999\n")  # a lock file whose process is gone
    (out / "lora-r2" / "seed-0" / ".done.json.abc123.tmp").write_text("{")
    (out / "lora-r2" / "seed-0" / ".adapter.xyz.tmp").mkdir()
    logs: list[str] = []
    run(tiny_study_dict(out, corpus_file, **LORA_ONLY), logs)
    assert not list(out.rglob("*.tmp")) and not (out / ".lock").exists()
    assert sum("left by an interrupted run" in m for m in logs) == 2


def test_files_follow_the_umask(tmp_path):
    from lorafair.store.rundir import write_json

    rd = RunDir(tmp_path / "r")
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": float("nan"), "y": [float("inf"), 1.5]})
        rd.save_weights("lora-r2", 0, lambda p: (p / "w.bin").write_bytes(b"x"), "lora")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert rd.weights_dir("lora-r2", 0, "lora").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a.json").read_text().replace(" ", "").replace("\n", "") == '{"x":null,"y":[null,1.5]}'


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_two_concurrent_runs_one_refusal_one_complete_result(tmp_path, corpus_file):
    """The first run is paused (SIGSTOP) in the middle of training, so the second surely starts while
    the first holds the folder; then the first goes on and must finish with the right weights."""
    sections = {**LORA_ONLY, "training": {**LORA_ONLY["training"], "max_steps": 40}}
    path = write_yaml(tmp_path / "s.yaml", tiny_study_dict(tmp_path / "run", corpus_file, **sections))
    cmd = [sys.executable, "-m", "lorafair", "run", str(path), "--no-analyses", "--no-report"]
    first = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "run" / "lora-r2" / "seed-0" / "checkpoint" / "state.json"
    deadline = time.time() + 240
    try:
        while not state.exists():
            assert first.poll() is None and time.time() < deadline, "the first run never checkpointed"
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.count("\n") == 1 and f"pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    run(tiny_study_dict(tmp_path / "clean", corpus_file, **sections))
    got, want = adapter(tmp_path / "run"), adapter(tmp_path / "clean")
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert not list((tmp_path / "run").rglob("*.tmp")) and not (tmp_path / "run" / ".lock").exists()


# ---------------------------------------------------------------- what a resumed or partial run reports


def test_stages_found_done_are_marked_from_an_earlier_run(tmp_path, corpus_file):
    from lorafair.report import build_report

    d = tiny_study_dict(tmp_path / "run", corpus_file, **LORA_ONLY)
    run(d)
    first = read_json(tmp_path / "run" / "timings.json")
    assert first["from_earlier_run"] == []
    run(d)
    again = read_json(tmp_path / "run" / "timings.json")
    assert again["from_earlier_run"] == ["corpus", "train", "evaluate"]
    assert all(again[s] == first[s] for s in again["from_earlier_run"])
    html = build_report(tmp_path / "run").read_text()
    assert html.count("(from an earlier run)") == 3


def test_report_and_analyze_name_the_missing_arms(cli, study_file, tmp_path):
    path = study_file(seeds=[0, 1])
    r = cli.invoke(app, ["run", str(path), "--arms", "full", "--no-analyses", "--no-report"])
    assert r.exit_code == 0, r.output
    for cmd in (["report", str(tmp_path / "run")], ["analyze", str(tmp_path / "run")]):
        r = cli.invoke(app, cmd)
        warning = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
        assert len(warning) == 1 and "base seed 0, lora-r2 seed 0, lora-r2 seed 1" in warning[0], r.stderr
