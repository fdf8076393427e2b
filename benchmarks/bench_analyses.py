"""Cost of the shift analyses (KL, Logit Lens, weight space) in units of one forward pass per arm.

    python benchmarks/bench_analyses.py

Trains the smoke study (studies/smoke.yaml: SmolLM2-135M; base, full, LoRA r=2 and r=8; 4 steps)
into a temporary folder without analyses, then runs `lorafair analyze` on it. The analyses time
themselves against one no-gradient forward pass per arm over the same held-out sequences
(analysis/timings.json); this benchmark collects those numbers. There is no peer tool here: the
figure says how many forward passes' worth of compute each analysis costs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, smoke_study  # noqa: E402

LORAFAIR = [sys.executable, "-m", "lorafair"]


def _lorafair(*args: str) -> float:
    t = time.perf_counter()
    proc = subprocess.run([*LORAFAIR, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"lorafair {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def run(quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        study = smoke_study(Path(tmp))
        run_dir = Path(tmp) / "smoke"
        study["output"] = str(run_dir)
        spec = Path(tmp) / "smoke.yaml"
        spec.write_text(yaml.safe_dump(study))
        train_s = _lorafair("run", str(spec), "--no-analyses", "--no-report")
        analyze_s = _lorafair("analyze", str(run_dir))
        t = json.loads((run_dir / "analysis" / "timings.json").read_text())
    rel = {k: round(v, 2) for k, v in t["relative_to_forward"].items()}
    rel["total"] = round(sum(t["seconds"].values()) / (t["forward_pass_s"] * t["n_arms"]), 2)
    print(f"  analyses: {t['n_arms']} arms, one forward pass per arm {t['forward_pass_s']:.2f}s; "
          + ", ".join(f"{k} {v}x" for k, v in rel.items()), flush=True)
    return {"setup": {"study": "studies/smoke.yaml", "n_sequences": study["analyses"]["n_sequences"],
                      "arms": t["n_arms"]},
            "seconds": {k: round(v, 2) for k, v in t["seconds"].items()},
            "forward_pass_per_arm_s": round(t["forward_pass_s"], 3),
            "relative_to_forward_pass_per_arm": rel,
            "train_wall_s": round(train_s, 1), "analyze_wall_s": round(analyze_s, 1),
            "target": "none (a measurement): analyses cost in forward passes per arm", "met": None}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
