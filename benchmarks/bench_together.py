"""A grid of 6 LoRA adapters trained together on one base against training them one after another.

    python benchmarks/bench_together.py [--quick]

Grid: ranks 2, 8, 32 (alpha = 2 x rank, all 7 projections) x seeds 0, 1, each adapter with its own
rows (RealToxicityPrompts prompts + neutral completions, one epoch, batch 4, max length 64, padded
batches), AdamW, cosine schedule with 10% warm-up. Sequential (what a study does today): per
adapter, load the base, wrap it and train it with ``train``. Together: load the base once and
``training.together.train_together`` (every step one forward and backward pass over the rows of
all six adapters). Each way runs in a fresh process; wall time includes model loads. The largest
difference between the two ways' loss curves is recorded (they agree up to float rounding).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, corpus, ratio, run_worker, sized, main  # noqa: E402

RANKS, SEEDS, MAX_LEN, LR = (2, 8, 32), (0, 1), 64, 3e-4
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _jobs(steps: int, batch: int):
    from lorafair.models import sources as models
    from lorafair.study.config import Arm
    from lorafair.training.encoding import encode
    from lorafair.training.together import Job

    tok = models.load_tokenizer(MODEL)
    n = steps * batch
    rows = encode(tok, corpus(n * len(RANKS) * len(SEEDS)), MAX_LEN)
    jobs = []
    for i, (r, s) in enumerate((r, s) for r in RANKS for s in SEEDS):
        arm = Arm(f"lora-r{r}", "lora", rank=r, alpha=2.0 * r, target_modules=TARGETS)
        jobs.append(Job(f"r{r}s{s}", arm, s, LR, rows[i * n:(i + 1) * n]))
    return tok, jobs


def worker(way: str, steps: str, batch: str) -> dict:
    import torch

    from lorafair.arms.bank import wrap_for_training
    from lorafair.models import sources as models
    from lorafair.study.config import TrainingConfig
    from lorafair.training.loop import train
    from lorafair.training.together import train_together

    tok, jobs = _jobs(int(steps), int(batch))
    cfg = TrainingConfig(epochs=1, batch_size=int(batch), max_length=MAX_LEN, schedule="cosine", warmup_ratio=0.1,
                         eval_every=10**9, checkpoint_every=10**9, packing=False)
    t0 = time.perf_counter()
    if way == "together":
        _, res = train_together(models.load_model(MODEL), jobs, cfg, tok.pad_token_id)
        losses = {k: [r["loss"] for r in v.log] for k, v in res.items()}
    else:
        losses = {}
        for j in jobs:
            model = wrap_for_training(models.load_model(MODEL), j.arm, j.seed)
            r = train(model, j.arm, j.train_rows, [], cfg, j.seed, j.lr, tok.pad_token_id)
            losses[j.key] = [x["loss"] for x in r.log]
    wall = time.perf_counter() - t0
    tokens = sum(len(x["input_ids"]) for j in jobs for x in j.train_rows)
    return {"way": way, "wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "losses": losses, "threads": torch.get_num_threads()}


def run(quick: bool = False) -> dict:
    steps, batch = sized(quick, (6, 4), (3, 4), (2, 2))
    seq = run_worker(__file__, "sequential", str(steps), str(batch))
    tog = run_worker(__file__, "together", str(steps), str(batch))
    diff = max(abs(a - b) for k in seq["losses"] for a, b in zip(seq["losses"][k], tog["losses"][k]))
    res = {"setup": {"model": MODEL, "adapters": len(RANKS) * len(SEEDS), "ranks": list(RANKS), "seeds": list(SEEDS),
                     "steps_per_adapter": steps, "batch_per_adapter": batch, "max_length": MAX_LEN, "dtype": "float32"},
           "sequential": seq, "together": tog, "max_abs_diff_loss": diff,
           "speedup": ratio(seq["wall_s"], tog["wall_s"]),
           "target": "speedup >= 1.3 (sequential wall time over together)"}
    res["met"] = bool(res["speedup"] >= 1.3)
    print(f"  together: {tog['wall_s']:.1f}s, sequential {seq['wall_s']:.1f}s -> {res['speedup']}x "
          f"(loss curves within {diff:.1e})", flush=True)
    return res


if __name__ == "__main__":
    main(sys.argv, run, worker)
