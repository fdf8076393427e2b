"""One training step of the 6-adapter grid together against one single-adapter step, and the
operators the joint step spends its time in (SmolLM2-135M, CPU, float32, 2 threads).

    PYTHONPATH=src python benchmarks/profile_together.py

Uses bench_together's grid and rows (one step of batch 4 per adapter); best of two timed steps
after a warm-up; the profile is torch.profiler's table of the joint step, by self CPU time.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import bench_together as B  # noqa: E402
from lorafair.arms.bank import wrap_for_training  # noqa: E402
from lorafair.models import sources as models  # noqa: E402
from lorafair.training.encoding import collate, completion_loss  # noqa: E402
from lorafair.training.together import _joint_loss, _RowAdapters, attach  # noqa: E402


def t(fn, n=2):
    """Best wall seconds of n calls after one warm-up call."""
    fn()
    best = 1e9
    for _ in range(n):
        s = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - s)
    return best


def main() -> dict:
    torch.set_num_threads(2)
    tok, jobs = B._jobs(1, 4)
    model = attach(models.load_model(B.MODEL), jobs)
    hooks = _RowAdapters(model)
    model.train()
    parts = [(j.key, j.train_rows) for j in jobs]

    def together():
        losses = _joint_loss(model, hooks, parts, tok.pad_token_id, torch.device("cpu"), None)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)

    tog = t(together)
    with torch.profiler.profile() as prof:
        together()
    hooks.remove()
    solo = wrap_for_training(models.load_model(B.MODEL), jobs[0].arm, 0)
    solo.train()

    def one():
        completion_loss(solo, collate(jobs[0].train_rows, tok.pad_token_id)).backward()
        solo.zero_grad(set_to_none=True)

    single = t(one)
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
    out = {"together_step_s": round(tog, 2), "single_step_s": round(single, 2),
           "six_single_steps_s": round(6 * single, 2), "rows_together": sum(len(r) for _, r in parts)}
    print(json.dumps(out))
    print(ops)
    return out


if __name__ == "__main__":
    main()
