"""Scale-out costs on this machine: the smoke study on the `local` and `ray` backends, Ray's start-up
and per-job overhead, and one arm trained by two processes (torchrun, gloo) against one process.

    python benchmarks/bench_scaleout.py [--quick]

- study: `studies/smoke.yaml` (real model: corpus, 3 trained arms, evaluation) run twice from an
  empty folder, once per backend; Ray with 2 workers of 1 CPU (and 1 thread) each, the local run
  with every core in one process. The two runs' compare.json must be equal.
- ray: `ray.init(num_cpus=2)` until the cluster answers; a cold task (first task of a fresh worker,
  which starts a Python process) and the mean of 50 warm no-op round trips.
- ddp: one LoRA arm of the real model, the same global batch and steps, trained by `lorafair train`
  under `torchrun --nproc_per_node 2` (1 thread per process) against one process with 2 threads;
  tokens/s from each run's done.json (tokens of the global batches / training seconds).

On a 2-core machine no backend has spare hardware: the numbers say what the machinery costs, not
what a cluster gains (each extra node or GPU runs its jobs at once instead of after each other).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TINY, corpus, ratio, run_worker, smoke_study, worker_main  # noqa: E402

STEPS = {True: 6, False: 16}


def _env(threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "RAY_worker_niceness": "0"}


def _smoke(folder: Path, backend: str) -> tuple[float, dict]:
    """Wall seconds of `lorafair run` on the smoke study with one backend, and its compare.json."""
    study = smoke_study(folder)
    study["output"] = str(folder / backend)
    if backend == "ray":
        study["execution"] = {"backend": "ray", "num_cpus": 1}
    path = folder / f"smoke-{backend}.yaml"
    path.write_text(yaml.safe_dump(study))
    cmd = [sys.executable, "-m", "lorafair", "run", str(path), "--no-analyses"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(2 if backend == "local" else 1), cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"smoke study on {backend} failed:\n{proc.stderr[-3000:]}")
    return wall, json.loads((folder / backend / "compare.json").read_text())


def ray_worker() -> dict:
    """Ray's start-up, a cold task and warm task round trips (fresh process)."""
    t0 = time.perf_counter()
    import ray

    t_import = time.perf_counter() - t0
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False)

    @ray.remote(num_cpus=1)
    def noop(x):
        return x

    t_init = time.perf_counter() - t0
    t1 = time.perf_counter()
    ray.get(noop.remote(0))
    cold = time.perf_counter() - t1
    ray.get([noop.remote(i) for i in range(4)])
    t2 = time.perf_counter()
    for i in range(50):
        ray.get(noop.remote(i))
    warm = (time.perf_counter() - t2) / 50
    ray.shutdown()
    return {"import_s": round(t_import, 2), "init_s": round(t_init, 2), "cold_task_s": round(cold, 3),
            "warm_task_ms": round(1000 * warm, 2)}


def _ddp_study(folder: Path, steps: int) -> Path:
    """One LoRA arm on a fixed JSONL corpus (no generation before training)."""
    rows = corpus(96)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    study = smoke_study(folder)
    study.update(output=str(folder / "run"), arms=[{"type": "lora", "rank": 8}], seeds=[0],
                 data={"corpus": "jsonl", "path": str(folder / "corpus.jsonl")})
    study["training"] = {"max_steps": steps, "batch_size": 8, "max_length": 64, "eval_every": steps,
                         "checkpoint_every": steps, "lr_lora": 6e-3, "lr_search": {"enabled": False}}
    path = folder / "ddp.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _train(study: Path, processes: int) -> dict:
    """`lorafair train` of lora-r8 seed 0 on 1 or 2 processes; tokens/s from its training log."""
    if processes == 1:
        cmd = [sys.executable, "-m", "lorafair", "train", str(study), "--arm", "lora-r8", "--seed", "0"]
        env = _env(2)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "lorafair", "train", str(study), "--arm", "lora-r8", "--seed", "0"]
        env = _env(1)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=study.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"training on {processes} process(es) failed:\n{proc.stderr[-3000:]}")
    arm = study.parent / "run" / "lora-r8" / "seed-0"
    log = [json.loads(x) for x in (arm / "train_log.jsonl").read_text().splitlines() if x.strip()]
    done = json.loads((arm / "done.json").read_text())
    return {"processes": done["processes"], "wall_s": round(wall, 1), "train_s": round(done["wall_s"], 1),
            "tokens": done["tokens"], "tokens_per_s": round(done["tokens"] / done["wall_s"], 1),
            "final_loss": log[-1]["loss"]}


def run(quick: bool) -> dict:
    """At the tiny size only the local study and the one-process training run: Ray's start-up and a
    two-process launch take minutes whatever the size, and their figures would mean nothing."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        local_wall, local_cmp = _smoke(folder, "local")
        if TINY:
            out["study"] = {"local_s": round(local_wall, 1), "ray": "not run at the tiny size"}
        else:
            ray_wall, ray_cmp = _smoke(folder, "ray")
            out["study"] = {"local_s": round(local_wall, 1), "ray_s": round(ray_wall, 1),
                            "ray_over_local": ratio(ray_wall, local_wall), "same_compare": local_cmp == ray_cmp}
    if not TINY:
        out["ray"] = run_worker(__file__, "ray")
    runs = {}
    for n in (1,) if TINY else (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            runs[n] = _train(_ddp_study(Path(tmp), 2 if TINY else STEPS[quick]), n)
    out["ddp"] = {"one": runs[1]}
    if 2 in runs:
        out["ddp"].update(two=runs[2], two_over_one_tokens_per_s=ratio(runs[2]["tokens_per_s"], runs[1]["tokens_per_s"]))
    out["target"] = "the ray backend writes the local backend's compare.json (costs are measured, not targets)"
    out["met"] = out["study"].get("same_compare")
    return out


def worker(kind: str) -> dict:
    return ray_worker() if kind == "ray" else {}


if __name__ == "__main__":
    if not worker_main(sys.argv, worker):
        from common import machine

        res = {"machine": machine(), **run("--quick" in sys.argv)}
        print(json.dumps(res, indent=1))
