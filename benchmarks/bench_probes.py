"""Probe scoring: lorafair's CrowS-Pairs log-likelihoods against lm-evaluation-harness's request
ordering on the same pairs, model and machine.

    python benchmarks/bench_probes.py [--quick]

Every sentence of the first n CrowS-Pairs pairs (both sentences of a pair) is scored: the sum of
log p(token) over all its tokens after the start token. Three ways, in one process, same batch size:
- lorafair: ``lm.sequence_loglik`` over all sentences (sorted by length, longest first, results
  put back in order), in float32 and in bf16 (bf16 where common.bf16_runs says so);
- file order: the same function fed one batch at a time in file order (what lorafair did before
  it sorted: every batch padded to its longest sentence);
- harness: a pure-HF re-implementation of lm-evaluation-harness's ``HFLM.loglikelihood`` for
  these requests (empty context, so the prefix token; requests ordered by the length of
  context + continuation, longest first, batches of that order right-padded, log-softmax over
  the batch's logits, the continuation's tokens gathered and summed). The harness itself is not
  installed here; its ordering is what this measures.
The largest difference between the log-likelihoods of each way and the harness's is recorded.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, bf16_runs, ratio, run_worker, sized, main  # noqa: E402

BATCH = 16


def harness_loglik(model, tok, texts: list[str], batch_size: int):
    """lm-evaluation-harness's loglikelihood for (context "", continuation text) requests, re-implemented."""
    import torch
    import torch.nn.functional as F

    from lorafair.models.lm import start_ids

    prefix = start_ids(tok)
    reqs = [(i, prefix, tok.encode(t, add_special_tokens=False)) for i, t in enumerate(texts)]
    reqs.sort(key=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))  # the harness's Collator key
    out = torch.zeros(len(texts))
    with torch.no_grad():
        for s in range(0, len(reqs), batch_size):
            chunk = reqs[s:s + batch_size]
            inps = [(ctx + cont)[:-1] for _, ctx, cont in chunk]
            width = max(len(x) for x in inps)
            ids = torch.tensor([x + [0] * (width - len(x)) for x in inps])
            logits = F.log_softmax(model(ids).logits.float(), dim=-1)
            for row, (i, ctx, cont) in enumerate(chunk):
                n = len(ctx + cont) - 1
                lp = logits[row, n - len(cont):n]
                out[i] = lp.gather(-1, torch.tensor(cont)[:, None]).sum()
    return out


def worker(n_pairs: str, reps: str) -> dict:
    import torch

    from lorafair.datasets.stereotype import crows_pairs
    from lorafair.models import lm, precision
    from lorafair.models import sources as models

    items = crows_pairs(int(n_pairs))
    texts = [it["stereo"] for it in items] + [it["anti"] for it in items]
    tok = models.load_tokenizer(MODEL)
    model = models.load_model(MODEL).eval()
    model16 = precision.for_inference(models.load_model(MODEL), torch.bfloat16).eval() if bf16_runs() else None

    def file_order(m):
        return torch.cat([lm.sequence_loglik(m, tok, texts[i:i + BATCH], BATCH)[0] for i in range(0, len(texts), BATCH)])

    ways = {"harness": lambda: harness_loglik(model, tok, texts, BATCH),
            "lorafair": lambda: lm.sequence_loglik(model, tok, texts, BATCH)[0],
            "file_order": lambda: file_order(model)}
    lm.sequence_loglik(model, tok, texts[:2], 2)  # warm-up
    if model16 is not None:
        ways["lorafair_bf16"] = lambda: lm.sequence_loglik(model16, tok, texts, BATCH)[0]
        lm.sequence_loglik(model16, tok, texts[:2], 2)
    seconds: dict = {k: [] for k in ways}
    values = {}
    for _ in range(int(reps)):
        for name, fn in ways.items():
            t = time.perf_counter()
            values[name] = fn()
            seconds[name].append(time.perf_counter() - t)
    ref = values["harness"]
    return {"sentences": len(texts), "seconds": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
            "best_s": {k: round(min(v), 3) for k, v in seconds.items()},
            "max_abs_diff_vs_harness": {k: float((v - ref).abs().max()) for k, v in values.items() if k != "harness"},
            "threads": torch.get_num_threads()}


def run(quick: bool = False) -> dict:
    n, reps = sized(quick, (1018, 1), (200, 1), (4, 1))
    r = run_worker(__file__, str(n), str(reps))
    b = r["best_s"]
    res = {"setup": {"model": MODEL, "pairs": n, "batch": BATCH, "repeats": reps, "probe": "CrowS-Pairs",
                     "peer": "lm-evaluation-harness request ordering (pure-HF re-implementation)"},
           **r,
           "speed_vs_harness": ratio(b["harness"], b["lorafair"]),
           "speed_vs_harness_bf16": ratio(b["harness"], b["lorafair_bf16"]) if "lorafair_bf16" in b else None,
           "speed_vs_file_order": ratio(b["file_order"], b["lorafair"]),
           "target": "speed_vs_harness >= 1 (same precision) with log-likelihoods within 1e-3"}
    res["met"] = bool(res["speed_vs_harness"] >= 1 and r["max_abs_diff_vs_harness"]["lorafair"] < 1e-3)
    print(f"  probes: lorafair {b['lorafair']:.1f}s (bf16 {b.get('lorafair_bf16', float('nan')):.1f}s), file order "
          f"{b['file_order']:.1f}s, harness ordering {b['harness']:.1f}s -> {res['speed_vs_harness']}x harness, "
          f"{res['speed_vs_file_order']}x file order", flush=True)
    return res


if __name__ == "__main__":
    main(sys.argv, run, worker)
