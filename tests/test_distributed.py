"""One arm on two processes (torchrun, gloo on the loopback): the loss curve and the final weights
of a one-process run at the same global batch, a run killed mid-way resumed from its checkpoint.
torchrun runs in its own process group (gloo inside a large pytest process can deadlock)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from lorafair.study.config import study_from_dict
from lorafair.errors import UserError
from lorafair.store.rundir import RunDir
from lorafair.training.loop import refuse_sharded
from lorafair.study.workers import train_arm
from lorafair.store.rundir import read_json, read_jsonl

from conftest import tiny_study_dict, write_corpus, write_yaml

REPO = Path(__file__).resolve().parents[1]
# batches of 3 split 2 + 1 over the processes; the epoch's last batch is smaller
SECTIONS = dict(arms=[{"type": "lora", "rank": 2}], training={
    "max_steps": 24, "batch_size": 3, "grad_accum": 2, "eval_every": 8, "checkpoint_every": 3, "lr_lora": 3e-3,
    "lr_search": {"enabled": False}})


def _torchrun(study: Path, **env_extra: str) -> subprocess.Popen:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "lorafair", "train", str(study), "--arm", "lora-r2", "--seed", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env_extra}
    return subprocess.Popen(cmd, env=env, cwd=study.parent, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_match_one_and_resume_after_a_kill(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    two = write_yaml(tmp_path / "two.yaml", tiny_study_dict(tmp_path / "two", corpus, **SECTIONS))

    proc = _torchrun(two)
    arm = tmp_path / "two" / "lora-r2" / "seed-0"
    deadline = time.time() + 600
    try:
        while not (arm / "checkpoint" / "state.json").is_file():  # written last: a checkpoint in full
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
    finally:  # torchrun and both training processes (they run in sessions of their own)
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            p.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (arm / "done.json").exists()

    again = _torchrun(two)
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out[-3000:]
    done = read_json(arm / "done.json")
    assert done["processes"] == 2 and 0 < done["resumed_from"] < 24

    one = study_from_dict(tiny_study_dict(tmp_path / "one", corpus, **SECTIONS), "one.yaml")
    train_arm(one, "lora-r2", 0, False, log=lambda m: None)
    ref = tmp_path / "one" / "lora-r2" / "seed-0"
    assert read_json(ref / "done.json")["processes"] == 1

    a, b = read_jsonl(arm / "train_log.jsonl"), read_jsonl(ref / "train_log.jsonl")
    assert [x["step"] for x in a] == list(range(1, 25))
    assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], abs=1e-5)
    assert [x["val_loss"] for x in read_json(arm / "val_curve.json")] == pytest.approx(
        [x["val_loss"] for x in read_json(ref / "val_curve.json")], abs=1e-5)
    wa, wb = load_file(arm / "adapter" / "adapter_model.safetensors"), load_file(ref / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)


def test_train_refuses_a_folder_another_process_holds(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    study = study_from_dict(tiny_study_dict(tmp_path / "out", corpus, **SECTIONS), "s.yaml")
    with RunDir(tmp_path / "out").lock():
        with pytest.raises(UserError, match="another lorafair process"):
            train_arm(study, "lora-r2", 0, False, log=lambda m: None)
    assert not (tmp_path / "out" / "lora-r2").exists()
    train_arm(study, "lora-r2", 0, False, log=lambda m: None)  # free again: trains
    assert (tmp_path / "out" / "lora-r2" / "seed-0" / "done.json").is_file()
    assert not (tmp_path / "out" / ".lock").exists()


@pytest.mark.slow
def test_torchrun_train_refuses_a_held_folder_on_every_process(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    two = write_yaml(tmp_path / "two.yaml", tiny_study_dict(tmp_path / "two", corpus, **SECTIONS))
    with RunDir(tmp_path / "two").lock():
        proc = _torchrun(two)
        out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0
    assert "another lorafair process" in out, out[-3000:]
    assert not (tmp_path / "two" / "lora-r2").exists()



@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED", "MEGATRON_LM"])
def test_sharded_launch_is_refused_in_one_line(kind):
    """A sharded launch would leave each process a shard of the weights lorafair saves whole (on CPU
    accelerate falls back to DDP, so the refusal is checked on the accelerator's reported type)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    with pytest.raises(UserError, match=f"training under {kind}: lorafair trains one arm data-parallel"):
        refuse_sharded(SimpleNamespace(distributed_type=DistributedType[kind]))
    for ok in ("NO", "MULTI_CPU", "MULTI_GPU"):
        refuse_sharded(SimpleNamespace(distributed_type=DistributedType[ok]))
