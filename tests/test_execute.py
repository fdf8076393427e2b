"""The study's jobs on Ray: the same files as the local backend, a killed worker's job retried,
GPUs per job. One Ray cluster (tests/conftest.py) serves the whole session."""

from __future__ import annotations

import copy
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from lorafair.study.config import study_from_dict
from lorafair.study.execute import Job, LocalExecutor, raise_failures
from lorafair.errors import UserError
from lorafair.study.runner import Runner
from lorafair.store.rundir import read_json

from conftest import tiny_study_dict, write_corpus

SECTIONS = dict(arms=["base", "full", {"type": "lora", "rank": 2}], seeds=[0, 1],
                training={"lr_search": {"enabled": True, "steps": 2, "full": [1e-5, 1e-4, 1e-3], "lora": [1e-4, 1e-3, 1e-2]}})


def _run(tmp: Path, name: str, backend: str, **sections) -> Runner:
    corpus = write_corpus(tmp / "corpus.jsonl")
    d = tiny_study_dict(tmp / name, corpus, **{**copy.deepcopy(SECTIONS), **sections})
    d["execution"] = {"backend": backend, **d.get("execution", {})}
    r = Runner(study_from_dict(d, f"{name}.yaml"), log=lambda m: None)
    r.run(analyses=False, report=False)
    return r


def _assert_same_results(a: Runner, b: Runner) -> None:
    assert read_json(a.rd.path / "compare.json") == read_json(b.rd.path / "compare.json")
    for arm in a.arms:
        if arm.type == "base":
            continue
        assert a.rd.read_lr_search(arm.name) == b.rd.read_lr_search(arm.name)
        for seed in a.study.seeds:
            folder = a.rd.weights_dir(arm.name, seed, arm.type).relative_to(a.rd.path)
            wa = load_file(next((a.rd.path / folder).glob("*.safetensors")))
            wb = load_file(next((b.rd.path / folder).glob("*.safetensors")))
            assert wa.keys() == wb.keys()
            for k in wa:
                torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0)
            la = [x["loss"] for x in a.rd.train_log(arm.name, seed)]
            assert la == [x["loss"] for x in b.rd.train_log(arm.name, seed)]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("local"), "local", "local")


def test_local_executor_collects_failures_and_goes_on():
    ran, lines = [], []

    def call(job):
        ran.append(job.name)
        if job.name == "b":
            raise UserError("bad b")
        if job.name == "c":
            raise ValueError("broken c")

    failures = LocalExecutor(call, lines.append).run([Job("a", "x"), Job("b", "x"), Job("c", "x"), Job("d", "x")])
    assert ran == ["a", "b", "c", "d"]
    assert [(f.job.name, f.user_error) for f in failures] == [("b", True), ("c", False)]
    assert "broken c" in failures[1].error and "Traceback" in failures[1].detail
    with pytest.raises(RuntimeError, match=r"train: 2 job\(s\) failed \(b: bad b; c: ValueError: broken c\)"):
        raise_failures("train", failures, lines.append)
    with pytest.raises(UserError, match="b: bad b"):
        raise_failures("train", failures[:1], lines.append)


def test_unknown_backend_is_a_user_error(tmp_path):
    d = tiny_study_dict(tmp_path / "run", tmp_path / "c.jsonl", execution={"backend": "slurm"})
    with pytest.raises(UserError, match="execution.backend: 'slurm' is not one of local, ray"):
        study_from_dict(d, "s.yaml")


@pytest.mark.slow
def test_ray_backend_equals_local(ray_cluster, local_run, tmp_path):
    r = _run(tmp_path, "ray", "ray")
    _assert_same_results(local_run, r)
    # one search job per arm, one training job per arm x seed; every trained arm is marked done
    assert sorted(p.name for p in (r.rd.path / "lr_search").glob("*.json")) == ["full.json", "lora-r2.json"]
    assert all(r.rd.done(a, s) for a in ("full", "lora-r2") for s in (0, 1))


@pytest.mark.slow
def test_declared_gpus_reach_each_job(ray_cluster, tmp_path):
    r = _run(tmp_path, "gpus", "ray", arms=["full", {"type": "lora", "rank": 2}], seeds=[0],
             execution={"num_gpus": 1})
    seen = [r.rd.done(a, 0)["visible_gpus"] for a in ("full", "lora-r2")]
    assert all(v in ("0", "1") for v in seen), seen


def _kill_busy_workers_once(folder: Path, killed: list, stop: threading.Event) -> None:
    """Once `folder` has a checkpoint, SIGKILL every Ray worker process that is running a task."""
    me = psutil.Process()
    while not stop.is_set() and not killed:
        if folder.is_dir() and any(folder.iterdir()):
            for p in me.children(recursive=True):
                try:
                    title = " ".join(p.cmdline())
                except psutil.Error:
                    continue
                if title.startswith("ray::") and not title.startswith("ray::IDLE"):
                    p.send_signal(signal.SIGKILL)
                    killed.append(title)
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_worker_is_retried_to_the_same_result(ray_cluster, tmp_path):
    sections = dict(arms=["base", "full"], seeds=[0],
                    training={"max_steps": 30, "checkpoint_every": 3, "eval_every": 10,
                              "lr_search": {"enabled": False}})
    local = _run(tmp_path, "local", "local", **sections)
    killed, stop = [], threading.Event()
    watcher = threading.Thread(target=_kill_busy_workers_once,
                               args=(tmp_path / "ray" / "full" / "seed-0" / "checkpoint", killed, stop))
    watcher.start()
    try:
        r = _run(tmp_path, "ray", "ray", **sections)
    finally:
        stop.set()
        watcher.join()
    assert killed, "no worker was running when the checkpoint appeared"
    _assert_same_results(local, r)
