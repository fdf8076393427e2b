"""Evaluating a sweep of 6 LoRA arms: base loaded once with adapters swapped (ArmBank) vs each arm's
model loaded afresh from disk (a fresh base + merge-free PeftModel.from_pretrained per arm).

    python benchmarks/bench_sweep.py [--quick]

Six random LoRA adapters (r=8, alpha 16, all 7 projections, B drawn at scale 0.02 so the arms
differ) are saved in PEFT format. Per arm: fixed-stream generation (RealToxicityPrompts eval
prompts, 2 continuations, 16 new tokens, top-p 0.9) and the token KL of the arm against base on
held-out sequences. lorafair (as `lorafair run` evaluates): one ArmBank; the arms generate together,
each forward pass holding rows of every adapter (`generate_adapters`, 32 rows per arm); the KL of
all arms with `compute_pairwise_kl`, base logits once per batch and the adapters' logits from
shared forward passes (`ArmBank.logits_many`, up to 64 rows). Peer: per arm, load the base from
disk, attach the adapter, generate, and compute the KL against base with the adapter disabled (the
per-model way: nothing shared between arms). Both run in one process after one warm-up load, in
the order fresh, bank, bank, fresh (times are the mean of the two runs); the continuations and KL
means must agree.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, TINY, eval_prompts, ratio, run_worker, sized, main  # noqa: E402

N_ARMS, SAMPLES, NEW, KL_BATCH = (2 if TINY else 6), 2, (4 if TINY else 16), 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapters(folder: Path, source: str = MODEL, n: int = N_ARMS, rank: int = 8) -> list[Path]:
    """n random LoRA adapters for `source`, saved with save_pretrained under folder/arm{i}."""
    import torch
    from peft import LoraConfig, get_peft_model

    from lorafair.models import sources as models

    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        m = get_peft_model(models.load_model(source), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                                                                 task_type="CAUSAL_LM", bias="none"))
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.02)
        path = folder / f"arm{i}"
        m.save_pretrained(path)
        out.append(path)
    return out


def kl_batches(tok, texts: list[str]):
    tok.padding_side = "right"
    return [dict(tok(texts[i:i + KL_BATCH], return_tensors="pt", padding=True)) for i in range(0, len(texts), KL_BATCH)]


def sweep_bank(source: str, adapters: list[Path], prompts: list[dict], kl_texts: list[str]) -> dict:
    """lorafair: base once, adapters swapped in; returns {continuations, kl} per arm."""
    from lorafair.models import sources as models
    from lorafair.analysis.shift import compute_pairwise_kl
    from lorafair.arms.bank import ArmBank
    from lorafair.models.generate import generate_adapters

    tok = models.load_tokenizer(source)
    bank = ArmBank(models.load_model(source).eval())
    names = [p.name for p in adapters]
    for name, path in zip(names, adapters):
        bank.add_lora(name, path)
    rows = generate_adapters(bank.peft, tok, prompts, names, SAMPLES, NEW, seed=0, top_p=0.9, batch_size=32 * len(names))
    gens = {name: [g["continuation"] for g in rows[name]] for name in names}

    res = compute_pairwise_kl(bank.logits, ["base", *names], kl_batches(tok, kl_texts), reference=("base", None), n_boot=10,
                              logits_many=bank.logits_many, group_rows=64)
    return {n: {"continuations": gens[n], "kl": res["summary"]["arms"][n]["kl_arm_base"]["mean"]} for n in names}


def sweep_fresh(source: str, adapters: list[Path], prompts: list[dict], kl_texts: list[str]) -> dict:
    """Peer: for each arm a freshly loaded base and PeftModel.from_pretrained, nothing shared."""
    import torch
    from peft import PeftModel

    from lorafair.models import sources as models
    from lorafair.analysis.kl import kl_pair
    from lorafair.analysis.kl import next_token_mask
    from lorafair.models.generate import generate

    tok = models.load_tokenizer(source)
    out = {}
    for path in adapters:
        model = PeftModel.from_pretrained(models.load_model(source), str(path)).eval()
        conts = [g["continuation"] for g in generate(model, tok, prompts, SAMPLES, NEW, seed=0, top_p=0.9)]
        total, count = 0.0, 0
        with torch.no_grad():
            for b in kl_batches(tok, kl_texts):
                la = model(**b).logits
                with model.disable_adapter():
                    lb = model(**b).logits
                kl, _ = kl_pair(la, lb)
                valid = next_token_mask(b["attention_mask"])
                total += float(kl[valid].double().sum())
                count += int(valid.sum())
        out[path.name] = {"continuations": conts, "kl": total / count}
        del model
    return out


def worker(n_prompts: str, n_kl: str) -> dict:
    from lorafair.models import sources as models

    prompts = eval_prompts(int(n_prompts) + int(n_kl))
    gen_prompts, kl_texts = prompts[: int(n_prompts)], [p["prompt"] for p in prompts[int(n_prompts):]]
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(Path(tmp))
        models.load_model(MODEL)  # warm the page cache for both
        wall = {"fresh": 0.0, "bank": 0.0}
        cpu = {"fresh": 0.0, "bank": 0.0}
        out = {}
        # fresh, bank, bank, fresh: a load that drifts during the run weighs on both alike
        for name in ("fresh", "bank", "bank", "fresh"):
            fn = sweep_fresh if name == "fresh" else sweep_bank
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = fn(MODEL, adapters, gen_prompts, kl_texts)
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
    fresh, bank = out["fresh"], out["bank"]
    same = all(fresh[a]["continuations"] == bank[a]["continuations"] for a in bank)
    kl_diff = max(abs(fresh[a]["kl"] - bank[a]["kl"]) for a in bank)
    return {"fresh_s": round(wall["fresh"] / 2, 2), "bank_s": round(wall["bank"] / 2, 2),
            "fresh_cpu_s": round(cpu["fresh"] / 2, 2), "bank_cpu_s": round(cpu["bank"] / 2, 2),
            "continuations_identical": same, "max_abs_diff_kl": kl_diff, "kl": {a: bank[a]["kl"] for a in bank}}


def run(quick: bool = False) -> dict:
    n_prompts, n_kl = sized(quick, (6, 16), (4, 8), (2, 2))
    r = run_worker(__file__, str(n_prompts), str(n_kl))
    res = {"setup": {"model": MODEL, "arms": N_ARMS, "lora": "random r=8, all 7 projections", "prompts": n_prompts,
                     "samples": SAMPLES, "max_new_tokens": NEW, "kl_sequences": n_kl},
           **r, "time_ratio": ratio(r["bank_s"], r["fresh_s"]), "target": "time_ratio <= 0.5"}
    res["met"] = bool(res["time_ratio"] <= 0.5)
    print(f"  sweep bank {r['bank_s']:.1f}s fresh {r['fresh_s']:.1f}s ratio {res['time_ratio']} "
          f"identical={r['continuations_identical']}", flush=True)
    return res


if __name__ == "__main__":
    main(sys.argv, run, worker)
