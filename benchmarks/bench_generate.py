"""Generation throughput: lorafair.models.generate vs transformers' text-generation pipeline.

    python benchmarks/bench_generate.py [--quick]

Same model (smollm2-135m, float32), same RealToxicityPrompts evaluation prompts, 4 continuations
per prompt, 20 new tokens, temperature 1, top-p 0.9. The pipeline is used as its documentation
shows: `pipe(prompts, do_sample=True, top_p=..., num_return_sequences=4, max_new_tokens=20,
batch_size=8, return_full_text=False)` with left padding, i.e. 32 sequences per forward, the same as
lorafair's batch of 32 (prompt, sample) rows. Both run in one process, alternating, after one
warm-up call each; continuations/s = continuations over wall time.

Also measured: the wall time lorafair spends inside the model's forward passes (a timer around
every call). pipeline time / that time is the ratio a generator with no cost besides lorafair's
forward passes would reach (`forward_bound`): at equal rows per forward the model itself bounds
the gain whatever the sampling loop does.

bf16: lorafair's generation also runs with the model's weights in bf16 (`lorafair_bf16`,
`ratio_bf16` against the float32 pipeline) where common.bf16_runs says the machine multiplies bf16
matrices in hardware (or LORAFAIR_BENCH_BF16=1 forces it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, bf16_runs, eval_prompts, maxrss_mb, ratio, run_worker, sized, main  # noqa: E402

SAMPLES, NEW, TOP_P, BATCH_ROWS = 4, 20, 0.9, 32


def worker(n_prompts: str, reps: str) -> dict:
    import torch
    from transformers import pipeline

    import copy

    from lorafair.models import precision
    from lorafair.models import sources as models
    from lorafair.models.generate import generate

    prompts = eval_prompts(int(n_prompts))
    tok = models.load_tokenizer(MODEL)
    model = models.load_model(MODEL).eval()
    pipe_tok = models.load_tokenizer(MODEL)
    pipe_tok.padding_side = "left"
    pipe = pipeline("text-generation", model=model, tokenizer=pipe_tok, device="cpu")
    texts = [p["prompt"] for p in prompts]
    model16 = precision.for_inference(copy.deepcopy(model), torch.bfloat16)

    def run_lorafair(ps, m=model):
        return len(generate(m, tok, ps, SAMPLES, NEW, seed=0, temperature=1.0, top_p=TOP_P, batch_size=BATCH_ROWS))

    def run_lorafair16(ps):
        return run_lorafair(ps, model16)

    def run_pipe(ts):
        torch.manual_seed(0)
        out = pipe(ts, do_sample=True, top_p=TOP_P, temperature=1.0, num_return_sequences=SAMPLES, max_new_tokens=NEW,
                   batch_size=BATCH_ROWS // SAMPLES, return_full_text=False, pad_token_id=pipe_tok.pad_token_id)
        return sum(len(o) for o in out)

    run_lorafair(prompts[:2]), run_pipe(texts[:2])  # warm-up
    ways = [("pipeline", run_pipe, texts), ("lorafair", run_lorafair, prompts)]
    if bf16_runs():
        run_lorafair16(prompts[:2])
        ways.append(("lorafair_bf16", run_lorafair16, prompts))
    times = {name: [] for name, _, _ in ways}
    counts = {}
    forward_s = []
    for _ in range(int(reps)):
        for name, fn, arg in ways:
            clock = [0.0]
            hooks = _forward_timer(model, clock) if name == "lorafair" else []
            t0 = time.perf_counter()
            counts[name] = fn(arg)
            times[name].append(time.perf_counter() - t0)
            for h in hooks:
                h.remove()
            if name == "lorafair":
                forward_s.append(clock[0])
    out: dict = {name: {"continuations": counts[name], "seconds": [round(t, 2) for t in ts],
                  "continuations_per_s": round(counts[name] / min(ts), 3)} for name, ts in times.items()}
    best = min(range(len(forward_s)), key=lambda i: times["lorafair"][i])
    out["lorafair"]["forward_s"] = round(forward_s[best], 2)
    out["lorafair"]["forward_share"] = round(forward_s[best] / times["lorafair"][best], 3)
    out["forward_bound"] = round(min(times["pipeline"]) / forward_s[best], 3)
    out["peak_rss_mb"] = round(maxrss_mb(), 1)
    return out


def _forward_timer(model, clock: list[float]) -> list:
    """Hooks adding the wall time of each forward call of `model` to clock[0]."""
    start = []

    def pre(module, args, kwargs):
        start.append(time.perf_counter())

    def post(module, args, kwargs, output):
        clock[0] += time.perf_counter() - start.pop()

    return [model.register_forward_pre_hook(pre, with_kwargs=True),
            model.register_forward_hook(post, with_kwargs=True)]


def run(quick: bool = False) -> dict:
    n, reps = sized(quick, (16, 2), (8, 1), (2, 1))
    r = run_worker(__file__, str(n), str(reps))
    res = {
        "setup": {"model": MODEL, "prompts": n, "samples": SAMPLES, "max_new_tokens": NEW, "top_p": TOP_P,
                  "rows_per_forward": BATCH_ROWS, "repeats": reps, "rate": "best of the repeats"},
        **r,
        "ratio": ratio(r["lorafair"]["continuations_per_s"], r["pipeline"]["continuations_per_s"]),
        "target": "ratio_bf16 >= 3 (lorafair in bf16 against the float32 pipeline)",
    }
    if "lorafair_bf16" in r:
        res["ratio_bf16"] = ratio(r["lorafair_bf16"]["continuations_per_s"], r["pipeline"]["continuations_per_s"])
        res["met"] = bool(res["ratio_bf16"] >= 3)
    else:
        res["ratio_bf16"] = None
        res["bf16"] = "not measured: this CPU has no bf16 matrix units (machine.gemm_gflops shows the cost)"
        res["met"] = None
    print(f"  generate lorafair {r['lorafair']['continuations_per_s']:.2f}/s  pipeline "
          f"{r['pipeline']['continuations_per_s']:.2f}/s  ratio {res['ratio']}, bf16 {res['ratio_bf16']} (forward passes alone: "
          f"{r['forward_bound']})", flush=True)
    return res


if __name__ == "__main__":
    main(sys.argv, run, worker)
