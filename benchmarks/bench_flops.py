"""Training FLOP/s of the full arm as a share of this machine's float32 matmul rate.

    python benchmarks/bench_flops.py [--quick]

In one fresh process: the matmul rate of torch on a training-like shape ([512 × 576] · [576 × 1536],
float32, the model's width and MLP width, about the tokens of one batch), then the full arm
trained with lorafair's loop, then the matmul rate again (the load of the machine may change).
Model FLOP/s = 6 × parameters × real tokens / training wall time (the usual estimate: forward 2,
backward 4 per parameter and token). The loop packs each batch's sequences into rows as long as
its longest sequence (`training.packing`, the default), so it processes less padding; the same run
with right-padded batches (`packing: false`) is measured after it. Both also give the share counted
on the tokens a padded batch would hold. ``packed`` is the headline, ``padded`` the comparison.
The share is against the mean of the two matmul measurements.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, run_worker, worker_main  # noqa: E402

SHAPE = (512, 576, 1536)


def matmul_rate(seconds: float = 3.0) -> float:
    """Best float32 GFLOP/s of a @ b over about `seconds` (a: [m, k], b: [k, n])."""
    import torch

    m, k, n = SHAPE
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b, out=out)
        best = max(best, 10 * 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def worker(steps: str, mode: str) -> dict:
    import torch

    from lorafair import models
    from lorafair.arms import wrap_for_training
    from lorafair.config import Arm, TrainingConfig
    from lorafair.train import collate, encode, schedule_order, train

    from common import corpus

    steps_i, batch = int(steps), 8
    tok = models.load_tokenizer(MODEL)
    rows = encode(tok, corpus(steps_i * batch), 96)
    model = wrap_for_training(models.load_model(MODEL), Arm("full", "full"), seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    padded = sum(collate([rows[i] for i in b], tok.pad_token_id)["input_ids"].numel()
                 for b in schedule_order(len(rows), batch, steps_i, 0))
    before = matmul_rate()
    cfg = TrainingConfig(max_steps=steps_i, batch_size=batch, max_length=96, eval_every=10**9, checkpoint_every=10**9,
                         packing=mode == "packed")
    t0 = time.perf_counter()
    res = train(model, Arm("full", "full"), rows, [], cfg, seed=0, lr=3e-5, pad_id=tok.pad_token_id)
    wall = time.perf_counter() - t0
    after = matmul_rate()
    peak = (before + after) / 2
    model_gflops = 6 * n_params * res.tokens / wall / 1e9
    padded_gflops = 6 * n_params * padded / wall / 1e9
    return {
        "mode": mode, "params": n_params, "steps": steps_i, "batch": batch, "real_tokens": res.tokens, "padded_tokens": padded,
        "train_wall_s": round(wall, 2), "matmul_gflops_before": round(before, 1), "matmul_gflops_after": round(after, 1),
        "model_gflops_real_tokens": round(model_gflops, 2), "model_gflops_padded_tokens": round(padded_gflops, 2),
        "share_real_tokens": round(model_gflops / peak, 3), "share_padded_tokens": round(padded_gflops / peak, 3),
        "threads": torch.get_num_threads(),
    }


def run(quick: bool = False) -> dict:
    steps = "3" if quick else "6"
    r = {mode: run_worker(__file__, steps, mode) for mode in ("packed", "padded")}
    p = r["packed"]
    res = {"setup": {"model": MODEL, "matmul_shape": list(SHAPE), "dtype": "float32",
                     "flops_estimate": "6 x params x tokens / wall"}, **p, "padded": r["padded"],
           "target": "share_real_tokens >= 0.5", "met": bool(p["share_real_tokens"] >= 0.5)}
    for mode, x in r.items():
        print(f"  flops ({mode}): {x['model_gflops_real_tokens']} GFLOP/s of {x['matmul_gflops_before']}/"
              f"{x['matmul_gflops_after']} matmul -> share {x['share_real_tokens']} (padded tokens "
              f"{x['share_padded_tokens']})", flush=True)
    return res


if __name__ == "__main__":
    if not worker_main(sys.argv, worker):
        import json

        print(json.dumps(run("--quick" in sys.argv), indent=1))
