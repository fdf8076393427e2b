"""Runs the shared analyses on a study's arms: token-posterior KL between arms, the Logit Lens per
layer, and the weight-space diagnostics of each update, then the rank recommendation.

The base model is loaded once and LoRA arms are swapped in as adapters (the runner's `ArmBank`);
analyses use the first seed of the study. The analyses themselves are pure functions in
`lorafair.analysis`; this module only feeds them and writes their results.
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from lorafair.store import rundir as store
from lorafair.analysis import lens as lens_mod
from lorafair.analysis import weights as W
from lorafair.analysis.shift import compute_lens, compute_pairwise_kl
from lorafair.arms.names import adapter_key, bank_name
from lorafair.models.lm import length_order
from lorafair.study.config import expand_arms
from lorafair.training.encoding import collate, encode


def _batches(items: list[dict], pad_id: int, batch_size: int, device, by_length: bool = True) -> list[dict]:
    """Padded batches of ``items``; by_length: longest first, each row's index in ``seq`` (little padding)."""
    order = length_order([len(x["input_ids"]) for x in items]) if by_length else list(range(len(items)))
    out = []
    for i in range(0, len(items), batch_size):
        b = collate([items[j] for j in order[i:i + batch_size]], pad_id)
        out.append({"input_ids": b["input_ids"].to(device), "attention_mask": b["attention_mask"].to(device),
                    "loss_mask": (b["labels"] != -100).long().to(device), "seq": torch.tensor(order[i:i + batch_size])})
    return out


def run_analyses(study, rd: store.RunDir, ctx, task, bank, done: list, splits: dict[str, list[dict]],
                 load_full, log) -> dict:
    """The shift analyses of a study's finished arms (first seed), written to ``rd``'s analysis folder.

    ctx: the run's `Context` (tokenizer); task: the study's task (its KL prompts); bank: an `ArmBank`
    with the finished adapters attached; done: the finished arms of the first seed; splits: the
    corpus split (held-out examples); load_full(seed): the fully fine-tuned model; log: one line
    per message. Returns {seed, arms, weights (when analysed), timings}."""
    a = study.analyses
    seed = study.seeds[0]
    names = {arm.name: bank_name(arm.name, seed) for arm in done}
    has_full = "full" in names
    if has_full:
        bank.add_full(load_full(seed))
    arms = list(names)
    reference = ("base", "full" if has_full else None)
    dev = next(bank.base.parameters()).device
    tok = ctx.tokenizer
    out: dict = {"seed": seed, "arms": arms}
    timings = {}

    def logits_fn(arm, ids, attn):
        return bank.logits(names[arm], ids, attn)

    def logits_many(group, ids, attn):
        got = bank.logits_many([names[a] for a in group], ids, attn)
        return {a: got[names[a]] for a in group}

    # token-posterior KL: held-out fine-tuning examples (prompt + target) and evaluation prompts
    heldout = (splits.get("heldout") or splits["val"])[: a.n_sequences]
    sets = {"heldout": encode(tok, heldout, study.training.max_length)}
    prompts = task.kl_prompts(ctx)[: a.n_sequences]
    if prompts:
        ids = [tok(p)["input_ids"][: study.training.max_length] for p in prompts]
        sets["prompts"] = [{"input_ids": x, "labels": [-100] * len(x)} for x in ids]
    batches = {name: _batches(items, tok.pad_token_id, a.batch_size, dev) for name, items in sets.items() if items}
    forward = _forward_seconds(logits_fn, arms, next(iter(batches.values()), []))
    t = time.perf_counter()
    kl = _kl_stage(study, rd, logits_fn, logits_many, arms, batches, reference, seed)
    timings["kl"] = time.perf_counter() - t
    if a.lens:
        t = time.perf_counter()
        lens_items = sets.get("prompts") or [{"input_ids": x["input_ids"], "labels": x["labels"]} for x in sets["heldout"]]
        _lens_stage(study, rd, tok, bank, names, arms, _batches(lens_items, tok.pad_token_id, a.batch_size, dev, False),
                    lens_items, reference)
        timings["lens"] = time.perf_counter() - t
    if a.weights and has_full:
        t = time.perf_counter()
        # ΔW needs the float32 weights: a bf16 bank's rounding would swamp full fine-tuning's small update
        f32 = None if bank.dtype == torch.float32 else (ctx.load_base(), load_full(seed))
        out["weights"] = weight_analysis(study, rd, expand_arms(study), bank, names, kl.get("heldout"), f32)
        timings["weights"] = time.perf_counter() - t
    out["timings"] = timings
    _write_timings(rd, timings, forward, len(arms), log)
    return out


def _kl_stage(study, rd, logits_fn, logits_many, arms, batches, reference, seed) -> dict:
    """Pairwise token-posterior KL per set of sequences; writes kl.json and kl_tokens.parquet."""
    kl, rows_all = {}, []
    for set_name, set_batches in batches.items():
        res = compute_pairwise_kl(logits_fn, arms, set_batches, reference=reference, n_boot=study.evaluation.bootstrap,
                                  logits_many=logits_many, group_rows=study.analyses.batch_size * 4)
        kl[set_name] = res["summary"]
        rows_all.append(res["rows"].assign(set=set_name))
    if rows_all:
        store.write_parquet(rd.analysis_path("kl_tokens", "parquet"), pd.concat(rows_all, ignore_index=True))
    main = kl.get("heldout") or next(iter(kl.values()), None)
    store.write_json(rd.analysis_path("kl"), {"arms": (main or {}).get("arms", {}), "sets": kl,
                                               "reference": list(reference), "seed": seed})
    return kl


def _lens_stage(study, rd, tok, bank, names, arms, batches, lens_items, reference) -> None:
    """The Logit Lens on the evaluation prompts (or held-out prompts); writes lens.json/.parquet."""
    a = study.analyses
    tox_ids, mapping = lens_mod.toxic_token_ids(tok)
    store.write_json(rd.analysis_path("toxic_tokens"), {"ids": tox_ids, "mapping": mapping,
                                                        "source": "better-profanity word list"})

    def hidden_fn(arm, ids, attn):
        with bank.use(names[arm]) as m:
            return lens_mod.lens_hidden(m, ids, attn)

    def project_fn(arm, h):
        with bank.use(names[arm]) as m, torch.no_grad():
            return lens_mod.project(m, h)

    res = compute_lens(hidden_fn, project_fn, arms, batches, tox_ids, reference=reference, n_examples=a.lens_examples)
    store.write_parquet(rd.analysis_path("lens", "parquet"), res["rows"])
    examples = {arm: [[[tok.decode([i]) for i in layer] for layer in seq] for seq in ex["ids"]]
                for arm, ex in res["examples"].items()}
    store.write_json(rd.analysis_path("lens"), {"summary": res["summary"], "top_tokens": examples,
                                                 "top_probs": {k: v["probs"] for k, v in res["examples"].items()},
                                                 "example_prompts": [tok.decode(x["input_ids"]) for x in lens_items[: a.lens_examples]]})


def _write_timings(rd, timings: dict, forward: float, n_arms: int, log) -> None:
    unit = forward * n_arms
    store.write_json(rd.analysis_path("timings"), {
        "seconds": timings, "forward_pass_s": forward, "n_arms": n_arms,
        "relative_to_forward": {k: v / unit for k, v in timings.items()} if unit > 0 else {},
        "note": "relative_to_forward: each analysis's wall time over the time of one forward pass per arm "
                "(no gradients) over the held-out analysis sequences"})
    log("analyses: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
        + f" (one forward pass per arm: {unit:.1f}s)")


def _forward_seconds(logits_fn, arms: list[str], batches: list[dict]) -> float:
    """Mean wall seconds of one no-gradient forward pass over `batches` per arm (after one warm-up
    batch): the unit in which the analyses' cost is reported."""
    if not batches:
        return 0.0
    with torch.no_grad():
        logits_fn(arms[0], batches[0]["input_ids"], batches[0]["attention_mask"])
        t = time.perf_counter()
        for arm in arms:
            for b in batches:
                logits_fn(arm, b["input_ids"], b["attention_mask"])
    return (time.perf_counter() - t) / len(arms)


def weight_analysis(study, rd: store.RunDir, study_arms: list, bank, names: dict[str, str],
                    kl_summary: dict | None, float32_models: tuple | None = None) -> dict:
    """ΔW of full fine-tuning (spectrum, energy at each rank of the grid, effective rank) and of each
    LoRA arm (relative norm, subspace overlap with full's top-r directions, intruder dimensions):
    the weights are read from ``bank`` (``names``: arm -> bank name), the mathematics is
    `analysis.weights.update_analysis`; results written to the run's analysis folder.
    float32_models: (base, full) in float32, read instead of the bank's when it runs in bf16."""
    lora_arms = [arm for arm in study_arms if arm.type == "lora" and arm.name in names]
    # the study's ranks plus every power of two up to 512, so the spectrum can name a rank beyond the grid
    grid = sorted({arm.rank for arm in study_arms if arm.type == "lora"} | {2**i for i in range(10)})
    targets = set(lora_arms[0].target_modules) if lora_arms else None
    base_m, full_m = float32_models or (bank.base, bank.full)
    base_w = {n: m.weight.detach().float().cpu().clone() for n, m in _linears(base_m, targets)}
    full_w = {n: m.weight.detach().float().cpu() for n, m in _linears(full_m, targets)}
    lora = {arm.name: (arm.rank, W.peft_deltas(bank.peft, adapter_key(names[arm.name]))) for arm in lora_arms}
    shift = {}
    if kl_summary:
        for arm in lora_arms:
            if arm.variant == "plain":
                sc = (kl_summary["arms"].get(arm.name) or {}).get("shift_captured")
                if sc:
                    shift[arm.rank] = sc["value"]
    df, summary = W.update_analysis(base_w, full_w, lora, grid, shift, study.analyses.energy_threshold)
    store.write_parquet(rd.analysis_path("weights", "parquet"), df)
    store.write_json(rd.analysis_path("weights"), summary)
    return summary


def _linears(model, targets: set[str] | None):
    from torch import nn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not name.endswith("lm_head") and "lora_" not in name:
            short = name.rsplit(".", 1)[-1]
            if short == "base_layer":  # a PEFT-wrapped Linear: report it under its own module name
                name = name.rsplit(".", 1)[0]
                short = name.rsplit(".", 1)[-1]
            if targets is None or short in targets:
                yield name.replace("base_model.model.", ""), mod
