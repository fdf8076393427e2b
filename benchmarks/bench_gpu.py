"""GPU check of the bf16 path: the code a study runs, on CUDA, with a randomly initialised model of
a real shape (no download, no model files).

    python benchmarks/bench_gpu.py [--shape smollm2-135m|llama-1b] [--steps 20] [--out gpu.json]

Checks and measures, float32 against bf16 in one process on one GPU:
- `precision.resolve("auto")` picks bf16 on this GPU (and the model's frozen base is bf16 under LoRA);
- training tokens/s (lorafair's loop, LoRA r=16 on all projections and full fine-tuning; random
  token rows of 256 tokens, batch 16) and the largest difference between the two loss curves;
- generation continuations/s (fixed-stream sampling, 64 prompts x 4 samples, 64 new tokens);
- LM scoring (`sequence_loglik`): the largest relative difference of the summed log-likelihoods.
Prints one JSON document (and writes it with --out). Without CUDA it stops with a message; it
is not part of `benchmarks/run.py` (which runs on the CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SHAPES = {  # real models' shapes: Llama-style configs
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
}
SEQ, BATCH = 256, 16


def _model(shape: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SHAPES[shape], max_position_embeddings=2048)).cuda()


def _rows(vocab: int, n: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, vocab, (n, SEQ), generator=g).tolist()
    return [{"input_ids": x, "labels": [-100] * (SEQ // 2) + x[SEQ // 2:]} for x in ids]


def _train(shape: str, arm_type: str, dtype, steps: int) -> dict:
    import torch

    from lorafair.arms.bank import wrap_for_training
    from lorafair.study.config import Arm, TrainingConfig
    from lorafair.training.loop import train

    arm = Arm("full", "full") if arm_type == "full" else Arm("lora-r16", "lora", rank=16, alpha=32.0, target_modules=(
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    model = wrap_for_training(_model(shape), arm, seed=0)
    rows = _rows(model.config.vocab_size, steps * BATCH)
    cfg = TrainingConfig(max_steps=steps, batch_size=BATCH, max_length=SEQ, eval_every=10**9, checkpoint_every=10**9)
    torch.cuda.synchronize()
    res = train(model, arm, rows, [], cfg, seed=0, lr=1e-5 if arm_type == "full" else 1e-4, pad_id=0, autocast=dtype)
    torch.cuda.synchronize()
    later = res.log[2:] or res.log  # after the warm-up steps
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    out = {"tokens_per_s": round(sum(r["tokens_per_s"] for r in later) / len(later), 1),
           "losses": [round(r["loss"], 5) for r in res.log], "precision": res.precision,
           "frozen_dtypes": sorted(str(d) for d in frozen), "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20)}
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return out


def _generate_and_score(shape: str, dtype) -> dict:
    import torch

    from lorafair.models import precision
    from lorafair.models.generate import _decode

    model = precision.for_inference(_model(shape), dtype).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(10, model.config.vocab_size, (64, 32), generator=g).cuda()
    attn = torch.ones_like(ids)
    u = torch.rand(64 * 4, 64, generator=g).cuda()
    _decode(model, ids[:4], attn[:4], 4, 4, u[:16], 1.0, 0.9, -1, 0)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        new = _decode(model, ids, attn, 4, 64, u, 1.0, 0.9, -1, 0)
    torch.cuda.synchronize()
    gen_s = time.perf_counter() - t
    with torch.no_grad():  # the summed log-likelihood, as lm.sequence_loglik computes it
        logits = model(input_ids=ids, attention_mask=attn).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)
    del model
    torch.cuda.empty_cache()
    return {"continuations_per_s": round(new.shape[0] / gen_s, 2), "seq_loglik": lp.cpu()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here; run this on a machine with a GPU")
    from lorafair.models import precision

    auto = precision.resolve("auto", "cuda")
    out: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": args.shape,
                 "auto_picks": precision.name(auto), "train": {}, "generate": {}}
    for arm in ("lora", "full"):
        f32 = _train(args.shape, arm, torch.float32, args.steps)
        b16 = _train(args.shape, arm, torch.bfloat16, args.steps)
        out["train"][arm] = {"float32": f32, "bfloat16": b16,
                             "bf16_over_float32": round(b16["tokens_per_s"] / f32["tokens_per_s"], 3),
                             "max_abs_diff_loss": max(abs(a - b) for a, b in zip(f32["losses"], b16["losses"]))}
    g32, g16 = _generate_and_score(args.shape, torch.float32), _generate_and_score(args.shape, torch.bfloat16)
    rel = ((g16["seq_loglik"] - g32["seq_loglik"]).abs() / g32["seq_loglik"].abs()).max().item()
    out["generate"] = {"float32_per_s": g32["continuations_per_s"], "bfloat16_per_s": g16["continuations_per_s"],
                       "bf16_over_float32": round(g16["continuations_per_s"] / g32["continuations_per_s"], 3)}
    out["scoring_max_rel_diff_loglik"] = rel
    out["checks"] = {"auto_is_bf16": auto == torch.bfloat16,
                     "lora_base_bf16": out["train"]["lora"]["bfloat16"]["frozen_dtypes"] == ["torch.bfloat16"],
                     "losses_close": all(v["max_abs_diff_loss"] < 0.05 for v in out["train"].values()),
                     "scoring_close": rel < 0.01}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
