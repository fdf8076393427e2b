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

`model_shapes` says how much of the gap is the model's own matrix shapes: the matmul rate of
every Linear layer's three products in training (forward x·Wᵀ, input gradient dY·W, weight
gradient dYᵀ·x) at the run's mean tokens per step, weighted by their FLOPs (the output head at the
completion tokens only, as the loss computes it). `share_of_model_shapes` is the training FLOP/s
over that rate: what remains besides the shapes is attention, norms, activations, the optimizer and
the loop.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, run_worker, sized, timed, main  # noqa: E402

SHAPE = (512, 576, 1536)


def matmul_rate(seconds: float | None = None) -> float:
    """Best float32 GFLOP/s of a @ b over about `seconds` (a: [m, k], b: [k, n])."""
    import torch

    seconds = timed(3.0) if seconds is None else seconds
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


def shape_rate(model, tokens: int, head_tokens: int, seconds: float | None = None) -> dict:
    """FLOP-weighted float32 rate of the Linear layers' training products at `tokens` rows."""
    import torch

    seconds = timed(0.4) if seconds is None else seconds
    shapes: dict[tuple[int, int, int], int] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            m = head_tokens if name.endswith("lm_head") else tokens
            for key in ((m, mod.in_features, mod.out_features), (m, mod.out_features, mod.in_features),
                        (mod.out_features, m, mod.in_features)):
                shapes[key] = shapes.get(key, 0) + 1
    total_flops, total_s = 0.0, 0.0
    for (m, k, n), count in shapes.items():
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        torch.mm(a, b, out=out)
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
        total_flops += count * 2 * m * k * n
        total_s += count * best
    return {"tokens": tokens, "head_tokens": head_tokens, "distinct_shapes": len(shapes),
            "gflops": round(total_flops / total_s / 1e9, 1)}


def worker(steps: str, mode: str) -> dict:
    import torch

    from lorafair.models import sources as models
    from lorafair.arms.bank import wrap_for_training
    from lorafair.study.config import Arm, TrainingConfig
    from lorafair.training.encoding import collate, encode
    from lorafair.training.loop import schedule_order, train

    from common import corpus

    steps_i, batch = int(steps), 8
    tok = models.load_tokenizer(MODEL)
    rows = encode(tok, corpus(steps_i * batch), 96)
    model = wrap_for_training(models.load_model(MODEL), Arm("full", "full"), seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    order = schedule_order(len(rows), batch, steps_i, 0)
    padded = sum(collate([rows[i] for i in b], tok.pad_token_id)["input_ids"].numel() for b in order)
    completions = sum(sum(t != -100 for t in rows[i]["labels"]) for b in order for i in b) / steps_i
    before = matmul_rate()
    cfg = TrainingConfig(max_steps=steps_i, batch_size=batch, max_length=96, eval_every=10**9, checkpoint_every=10**9,
                         packing=mode == "packed")
    t0 = time.perf_counter()
    res = train(model, Arm("full", "full"), rows, [], cfg, seed=0, lr=3e-5, pad_id=tok.pad_token_id)
    wall = time.perf_counter() - t0
    after = matmul_rate()
    peak = (before + after) / 2
    rows_per_step = res.tokens / steps_i if mode == "packed" else padded / steps_i
    shapes = shape_rate(model, int(rows_per_step), int(completions))
    model_gflops = 6 * n_params * res.tokens / wall / 1e9
    # steps after the first: without the one-time costs (packing check, first allocations)
    step_tokens = [sum(len(rows[i]["input_ids"]) for i in b) for b in order]
    later = list(zip(step_tokens, res.log))[1:]
    steady_s = sum(n / r["tokens_per_s"] for n, r in later)
    steady_gflops = 6 * n_params * sum(n for n, _ in later) / steady_s / 1e9
    padded_gflops = 6 * n_params * padded / wall / 1e9
    return {
        "mode": mode, "params": n_params, "steps": steps_i, "batch": batch, "real_tokens": res.tokens, "padded_tokens": padded,
        "train_wall_s": round(wall, 2), "matmul_gflops_before": round(before, 1), "matmul_gflops_after": round(after, 1),
        "model_gflops_real_tokens": round(model_gflops, 2), "model_gflops_padded_tokens": round(padded_gflops, 2),
        "share_real_tokens": round(model_gflops / peak, 3), "share_padded_tokens": round(padded_gflops / peak, 3),
        "model_gflops_after_first_step": round(steady_gflops, 2),
        "share_after_first_step": round(steady_gflops / peak, 3),
        "model_shapes": shapes, "share_of_model_shapes": round(model_gflops / shapes["gflops"], 3),
        "threads": torch.get_num_threads(),
    }


def run(quick: bool = False) -> dict:
    steps = str(sized(quick, 12, 4, 2))
    r = {mode: run_worker(__file__, steps, mode) for mode in ("packed", "padded")}
    p = r["packed"]
    res = {"setup": {"model": MODEL, "matmul_shape": list(SHAPE), "dtype": "float32",
                     "flops_estimate": "6 x params x tokens / wall"}, **p, "padded": r["padded"],
           "target": "share_real_tokens >= 0.5", "met": bool(p["share_real_tokens"] >= 0.5)}
    for mode, x in r.items():
        print(f"  flops ({mode}): {x['model_gflops_real_tokens']} GFLOP/s of {x['matmul_gflops_before']}/"
              f"{x['matmul_gflops_after']} matmul -> share {x['share_real_tokens']} (padded tokens "
              f"{x['share_padded_tokens']}); the model's own shapes allow {x['model_shapes']['gflops']} "
              f"-> share {x['share_of_model_shapes']}", flush=True)
    return res


if __name__ == "__main__":
    main(sys.argv, run, worker)
