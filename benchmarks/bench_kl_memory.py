"""Memory and time of the streaming pairwise KL and Logit Lens against holding every arm's logits
(of every layer, for the lens) in memory.

    python benchmarks/bench_kl_memory.py --out benchmarks/results/kl_memory.json

A tiny random Llama with a realistic vocabulary (49,152, as SmolLM2) and three arms (base, full,
one LoRA-like perturbation). For 32, 128 and 512 held-out sequences (batch 8, 64 tokens) each
method runs in a fresh subprocess; wall and CPU seconds are recorded (CPU time is the fairer
figure on a shared machine); peak RSS growth = ru_maxrss at the end − RSS after the models
and data are built. The naive peer concatenates every arm's float32 logits and computes KL on the
whole tensor at once (what a short script would do); it is skipped where its estimated peak
exceeds --naive-max-gb (default 4 GB: it runs at 32 sequences; 128 needs about 13.5 GB), and the
estimate is recorded instead.

Logit Lens: `compute_lens` (hidden states per batch, one layer's logits at a time) against the
direct way, `lens.layer_logits` for all sequences and every layer of every arm held at once, then
KL to base per layer and the probability mass on 64 fixed "toxic" token ids; same subprocess and
peak measure, at 8 and 32 sequences (`--lens-sizes`). For lens rows, `kl_arm_base_mean` is the
mean over layers of the per-layer KL to base, and `toxic_mass` the mean over layers of the mass.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_worker, sized  # noqa: E402

VOCAB, SEQ, BATCH = 49152, 64, 8
ARMS = ["base", "full", "lora"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _models():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )
    base = LlamaForCausalLM(cfg).eval()
    out = {"base": base}
    for name, scale in (("full", 0.05), ("lora", 0.02)):
        m = copy.deepcopy(base)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(scale * torch.randn_like(p))
        out[name] = m
    return out


def _data(n: int):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    return ids, torch.ones_like(ids)


def worker(method: str, n: int | str) -> dict:
    import torch

    n = int(n)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    models = _models()
    ids, attn = _data(n)
    rss0 = _maxrss_mb(), _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        if method.startswith("lens_"):
            means, shift = _lens(method, models, ids, attn)
        elif method == "streaming":
            from lorafair.analysis.shift import compute_pairwise_kl

            def logits_fn(arm, i, a):
                return models[arm](input_ids=i, attention_mask=a).logits

            batches = ({"input_ids": ids[i : i + BATCH], "attention_mask": attn[i : i + BATCH]} for i in range(0, n, BATCH))
            res = compute_pairwise_kl(logits_fn, ARMS, batches, n_boot=200)
            means = {a: res["summary"]["arms"][a]["kl_arm_base"]["mean"] for a in ARMS}
            shift = res["summary"]["arms"]["lora"]["shift_captured"]["value"]
        else:
            logits = {
                arm: torch.cat([m(input_ids=ids[i : i + BATCH], attention_mask=attn[i : i + BATCH]).logits[:, :-1] for i in range(0, n, BATCH)])
                for arm, m in models.items()
            }
            lb = torch.log_softmax(logits["base"], -1)
            means = {}
            for arm in ARMS:
                la = torch.log_softmax(logits[arm], -1)
                means[arm] = float(torch.nn.functional.kl_div(lb, la, log_target=True, reduction="none").sum(-1).mean())
                del la
            lf = torch.log_softmax(logits["full"], -1)
            kl_fl = torch.nn.functional.kl_div(torch.log_softmax(logits["lora"], -1), lf, log_target=True, reduction="none").sum(-1).mean(1)
            kl_fb = torch.nn.functional.kl_div(lb, lf, log_target=True, reduction="none").sum(-1).mean(1)
            shift = float(1 - kl_fl.mean() / kl_fb.mean())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "method": method,
        "n_sequences": n,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "rss_after_setup_mb": round(rss0[1], 1),
        "peak_rss_mb": round(_maxrss_mb(), 1),
        "peak_growth_mb": round(_maxrss_mb() - rss0[1], 1),
        "kl_arm_base_mean": means,
        ("toxic_mass" if method.startswith("lens_") else "shift_captured_lora"): shift,
    }


TOXIC = list(range(1000, 49152, 750))[:64]


def _lens(method: str, models: dict, ids, attn) -> tuple[dict, dict]:
    """Per arm: mean over layers of the token-weighted KL to base, and of the mean toxic mass."""
    import torch

    from lorafair.analysis import lens

    n = ids.shape[0]
    if method == "lens_streaming":
        from lorafair.analysis.shift import compute_lens

        hidden_fn, project_fn = lens.lens_fns(lambda arm: models[arm])
        batches = ({"input_ids": ids[i : i + BATCH], "attention_mask": attn[i : i + BATCH]} for i in range(0, n, BATCH))
        res = compute_lens(hidden_fn, project_fn, ARMS, batches, TOXIC, reference=("base", None))
        kl = {a: sum(r["kl_base"] for r in res["summary"][a]) / len(res["summary"][a]) for a in ARMS}
        mass = {a: sum(r["toxic_mass_mean"] for r in res["summary"][a]) / len(res["summary"][a]) for a in ARMS}
        return kl, mass
    per_arm = {
        arm: [torch.cat(ls) for ls in zip(*[lens.layer_logits(m, ids[i : i + BATCH], attn[i : i + BATCH]) for i in range(0, n, BATCH)])]
        for arm, m in models.items()
    }
    kl, mass = {}, {}
    for arm in ARMS:
        kls, masses = [], []
        for a_logits, b_logits in zip(per_arm[arm], per_arm["base"]):
            la, lb = torch.log_softmax(a_logits, -1), torch.log_softmax(b_logits, -1)
            kls.append(float((la.exp() * (la - lb)).sum(-1).mean()))
            masses.append(float(la[..., TOXIC].exp().sum(-1).mean()))
            del la, lb
        kl[arm], mass[arm] = sum(kls) / len(kls), sum(masses) / len(masses)
    return kl, mass


def lens_naive_estimate_gb(n: int) -> float:
    """Every layer's logits of every arm (2 layers x 3 arms), their batch copies, 3 temporaries."""
    one = n * SEQ * VOCAB * 4 / 2**30
    return round(one * (2 * 2 * len(ARMS) + 3), 2)


def naive_estimate_gb(n: int) -> float:
    """About 2 copies of every arm's float32 logits (batches, then their concatenation) plus 3
    vocabulary-sized temporaries; matches the measured peak at 32 and 128 sequences."""
    one = n * SEQ * VOCAB * 4 / 2**30
    return round(one * (2 * len(ARMS) + 3), 2)


def measure(sizes: list[int], lens_sizes: list[int], naive_max_gb: float) -> dict:
    """Run every (method, size) in a fresh subprocess; the JSON written by main / returned to run.py."""
    runs = []
    plan = [(m, n) for n in sizes for m in ("streaming", "naive")]
    plan += [(m, n) for n in lens_sizes for m in ("lens_streaming", "lens_naive")]
    estimate = {"naive": naive_estimate_gb, "lens_naive": lens_naive_estimate_gb}
    for method, n in plan:
        est = estimate[method](n) if method in estimate else 0.0
        if est > naive_max_gb:
            runs.append({"method": method, "n_sequences": n, "skipped": True, "estimated_peak_gb": est})
            print(f"  {method:14s} n={n:4d}  skipped (estimated {est} GB)", flush=True)
            continue
        row = run_worker(__file__, method, str(n))
        runs.append(row)
        print(f"  {method:14s} n={n:4d}  {row['seconds']:7.2f} s  peak growth {row['peak_growth_mb']:8.1f} MB", flush=True)
    agree, ratios = {}, {}
    for kind, (a, b) in {"kl": ("streaming", "naive"), "lens": ("lens_streaming", "lens_naive")}.items():
        for n in sorted({r["n_sequences"] for r in runs}):
            pair = {r["method"]: r for r in runs if r["n_sequences"] == n and not r.get("skipped")}
            if a in pair and b in pair:
                agree[f"{kind}_{n}"] = max(abs(pair[a]["kl_arm_base_mean"][x] - pair[b]["kl_arm_base_mean"][x]) for x in ARMS)
                ratios[f"{kind}_{n}"] = {
                    "peak_growth_ratio": round(pair[a]["peak_growth_mb"] / max(pair[b]["peak_growth_mb"], 1e-9), 3),
                    "time_ratio": round(pair[a]["seconds"] / pair[b]["seconds"], 3),
                    "cpu_time_ratio": round(pair[a]["cpu_seconds"] / pair[b]["cpu_seconds"], 3),
                }
    stream = sorted((r["n_sequences"], r["peak_growth_mb"]) for r in runs if r["method"] == "streaming")
    return {
        "setup": {"vocab": VOCAB, "seq_len": SEQ, "batch": BATCH, "arms": ARMS, "model": "random Llama, d=64, 2 layers",
                  "lens_toxic_ids": len(TOXIC)},
        "runs": runs,
        "max_abs_diff_kl_mean_streaming_vs_naive": agree,
        "streaming_vs_naive": ratios,
        "kl_streaming_peak_growth_vs_sequences": {"sizes": [n for n, _ in stream], "peak_growth_mb": [m for _, m in stream]},
    }


def run(quick: bool = False) -> dict:
    """Entry for benchmarks/run.py."""
    res = measure(sized(quick, [32, 128, 512], [32, 128], [2, 4]), sized(quick, [8, 32], [8], [2]), 4.0)
    growth = res["kl_streaming_peak_growth_vs_sequences"]["peak_growth_mb"]
    res["kl_streaming_growth_max_over_min"] = round(max(growth) / max(min(growth), 1.0), 3)
    res["target"] = "streaming peak below the direct way (KL and lens) and KL streaming peak flat (max/min <= 1.5)"
    res["met"] = bool(all(r["peak_growth_ratio"] < 1 for r in res["streaming_vs_naive"].values())
                      and res["kl_streaming_growth_max_over_min"] <= 1.5)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/kl_memory.json")
    ap.add_argument("--sizes", default="32,128,512")
    ap.add_argument("--lens-sizes", default="8,32")
    ap.add_argument("--naive-max-gb", type=float, default=4.0)
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return

    from lorafair.store.rundir import write_json

    sizes = [int(x) for x in args.sizes.split(",") if x]
    lens_sizes = [int(x) for x in args.lens_sizes.split(",") if x]
    write_json(args.out, measure(sizes, lens_sizes, args.naive_max_gb))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
