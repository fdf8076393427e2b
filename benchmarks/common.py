"""Shared pieces of the benchmarks: machine description, fresh-subprocess workers, the corpus.

Every benchmark module has `run(quick: bool) -> dict` (called by run.py) and a `worker(...)`
entry that runs one measurement in a fresh Python process, so that peak memory (ru_maxrss) of one
run never contaminates another. A worker prints one JSON line as its last line of output.

With ``LORAFAIR_BENCH_TINY=1`` every benchmark runs at a tiny size on the tiny random model, its
workers called in the same process (tests/test_benchmarks.py: a renamed or moved name fails there
in seconds instead of in the next full benchmark run). Tiny figures measure nothing.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

TINY = os.environ.get("LORAFAIR_BENCH_TINY") == "1"
MODEL = "tiny-random" if TINY else "smollm2-135m"
ROOT = Path(__file__).resolve().parents[1]

# Neutral completions of varied length (about 8 to 26 tokens), as a detoxifying corpus has.
COMPLETIONS = [
    " and then they went home.",
    " which is why everyone agreed to meet again next week to talk it over calmly.",
    " but the rest of the evening was quiet and pleasant.",
    " so we decided to leave it there.",
    " and the neighbours helped carry the boxes up the stairs before it started to rain in the late afternoon.",
    " as the report explained in some detail.",
    " and I think that is fair to everyone involved, including the people who were not there to speak for themselves.",
    " then she smiled and thanked them.",
]


def maxrss_mb() -> float:
    """Peak resident memory of this process so far, MB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident memory of this process, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    import peft
    import torch
    import transformers

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
        "bf16_matrix_units": _bf16_units(),
        "gemm_gflops": gemm_rates(),
    }


def _bf16_units() -> bool:
    from lorafair.models import precision

    return precision.cpu_bf16()


def corpus(n: int) -> list[dict]:
    """n fine-tuning rows: RealToxicityPrompts fine-tuning prompts with neutral completions."""
    from lorafair.datasets import prompts

    src = prompts.rtp_toxic("finetune", n=n)
    return [{"prompt": r["prompt"], "completion": COMPLETIONS[i % len(COMPLETIONS)]} for i, r in enumerate(src)]


def eval_prompts(n: int) -> list[dict]:
    from lorafair.datasets import prompts

    return prompts.rtp_toxic("eval", n=n)


def bf16_runs() -> bool:
    """Whether the benchmarks measure bf16 beside float32: at the tiny size (so the code runs), where
    the CPU has bf16 matrix units or a GPU is used, or when LORAFAIR_BENCH_BF16=1 forces it. Without
    those units torch multiplies bf16 matrices many times slower than float32 (see gemm_rates), and
    a bf16 run of the real model would take hours while saying nothing about bf16 hardware."""
    if TINY or os.environ.get("LORAFAIR_BENCH_BF16") == "1":
        return True
    from lorafair.models import precision

    return precision.bf16_supported()


def gemm_rates(shape: tuple[int, int, int] = (512, 576, 576), seconds: float = 1.0) -> dict:
    """Best GFLOP/s of one matrix product in float32 and in bf16 on this machine (torch's threads)."""
    import time

    import torch

    m, k, n = shape
    out = {"shape": list(shape)}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b
        best, end = 0.0, time.perf_counter() + timed(seconds)
        while True:
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
            if time.perf_counter() > end:
                break
        out[str(dtype).removeprefix("torch.")] = round(best, 1)
    out["bf16_over_float32"] = round(out["bfloat16"] / out["float32"], 3)
    return out


def sized(quick: bool, normal, quick_value, tiny_value):
    """The size of a benchmark: tiny_value under LORAFAIR_BENCH_TINY, else quick_value or normal."""
    return tiny_value if TINY else quick_value if quick else normal


def timed(seconds: float) -> float:
    """How long a timing loop runs: as given, or a hundredth of a second at the tiny size."""
    return 0.01 if TINY else seconds


def smoke_study(folder: Path) -> dict:
    """studies/smoke.yaml as a dict; at the tiny size on the tiny random model, a small JSONL corpus
    (written into ``folder``) and a few steps, prompts and tokens."""
    import yaml

    study = yaml.safe_load((ROOT / "studies" / "smoke.yaml").read_text())
    if not TINY:
        return study
    (folder / "tiny-corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus(24)))
    study.update(model={"source": MODEL, "precision": "float32"},
                 data={"corpus": "jsonl", "path": str(folder / "tiny-corpus.jsonl"), "val_fraction": 0.2,
                       "heldout_fraction": 0.1},
                 evaluation={"samples": 1, "n_prompts": 2, "max_new_tokens": 3, "bootstrap": 20, "batch_size": 8},
                 analyses={"n_sequences": 2, "batch_size": 2}, arms=["base", "full", {"type": "lora", "rank": 2}])
    study["training"].update(max_steps=2, max_length=32)
    return study


def run_worker(script: str, *args: str, timeout: float = 1200) -> dict:
    """Run `python script --worker args...` in a fresh process; its last stdout line is JSON. At the
    tiny size the script's `worker` runs in this process (the same JSON round trip)."""
    if TINY:
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"_bench_{Path(script).stem}", script)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return json.loads(json.dumps(mod.worker(*args)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(script).name} worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_main(argv: list[str], worker) -> bool:
    """If argv is `--worker a b c`, run worker(a, b, c), print its JSON and return True."""
    if len(argv) > 1 and argv[1] == "--worker":
        print(json.dumps(worker(*argv[2:])), flush=True)
        return True
    return False


def main(argv: list[str], run, worker) -> None:
    """A benchmark file run as a script: a worker when called with `--worker`, else the benchmark
    itself (`--quick` for the small size), its result printed as JSON."""
    if not worker_main(argv, worker):
        print(json.dumps(run("--quick" in argv), indent=1))


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")
