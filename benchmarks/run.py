"""Every benchmark in one run, one JSON file: lorafair against its peer on the same model, data and
settings, with the ratio and whether the target is met.

    python benchmarks/run.py --out benchmarks/results.json [--quick] [--only train,sweep,...]

Benchmarks: train (Trainer + PEFT), sweep (per-arm fresh loads), generate (text-generation
pipeline), kl_lens (all logits in memory), flops (matmul rate), analyses (cost of the shift analyses in
forward passes per arm; no peer), probes (CrowS-Pairs scoring against lm-evaluation-harness's request
ordering), together (a 6-adapter LoRA grid trained on one base against one after another); train
and generate measure bf16 beside float32. The machine (nproc, CPU model,
torch version) and its load average before and after each benchmark are recorded.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

BENCHES = {"train": "bench_train", "sweep": "bench_sweep", "generate": "bench_generate",
           "kl_lens": "bench_kl_memory", "flops": "bench_flops", "analyses": "bench_analyses",
           "scaleout": "bench_scaleout", "probes": "bench_probes", "together": "bench_together"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about 5 minutes on a quiet 2-core machine)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHES)}")
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")

    from common import machine

    from lorafair.models.sources import prepare
    from lorafair.store.rundir import write_json

    prepare("smollm2-135m")
    chosen = [b for b in args.only.split(",") if b] or list(BENCHES)
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        sys.exit(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    out = {"command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]), "quick": args.quick,
           "machine": machine(), "benchmarks": {}}
    t_all = time.perf_counter()
    for name in chosen:
        print(f"[{name}]", flush=True)
        load0, t0 = os.getloadavg(), time.perf_counter()
        res = importlib.import_module(BENCHES[name]).run(args.quick)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        res["loadavg_before"], res["loadavg_after"] = list(load0), list(os.getloadavg())
        out["benchmarks"][name] = res
        write_json(args.out, out)  # partial results survive an interrupted run
    out["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    out["targets"] = {name: {"met": r.get("met"), "target": r.get("target", "see arms")}
                      for name, r in out["benchmarks"].items()}
    if "train" in out["benchmarks"]:
        for arm, r in out["benchmarks"]["train"]["arms"].items():
            out["targets"][f"train_{arm}"] = {"met": r["met"], "target": r["target"],
                                               "tokens_per_s_ratio": r["tokens_per_s_ratio"], "peak_rss_ratio": r["peak_rss_ratio"],
                                               "tokens_per_s_ratio_bf16": r.get("tokens_per_s_ratio_bf16"),
                                               "bf16_over_float32": r.get("bf16_over_float32")}
    write_json(args.out, out)
    print(f"wrote {args.out} in {out['total_wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
