"""Shared pieces of the benchmarks: machine description, fresh-subprocess workers, the corpus.

Every benchmark module has `run(quick: bool) -> dict` (called by run.py) and a `worker(...)`
entry that runs one measurement in a fresh Python process, so that peak memory (ru_maxrss) of one
run never contaminates another. A worker prints one JSON line as its last line of output.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

MODEL = "smollm2-135m"
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
    }


def corpus(n: int) -> list[dict]:
    """n fine-tuning rows: RealToxicityPrompts fine-tuning prompts with neutral completions."""
    from lorafair.datasets import prompts

    src = prompts.rtp_toxic("finetune", n=n)
    return [{"prompt": r["prompt"], "completion": COMPLETIONS[i % len(COMPLETIONS)]} for i, r in enumerate(src)]


def eval_prompts(n: int) -> list[dict]:
    from lorafair.datasets import prompts

    return prompts.rtp_toxic("eval", n=n)


def run_worker(script: str, *args: str, timeout: float = 1200) -> dict:
    """Run `python script --worker args...` in a fresh process; its last stdout line is JSON."""
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


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")
