"""The analyses stage: the shared analyses of a study's arms, each an entry of the table of stages
(lorafair.study.stages) turned on by its study flag: token-posterior KL between arms, the Logit Lens
per layer, and the weight-space diagnostics of each update, then the rank recommendation.

The base model is loaded once and LoRA arms are swapped in as adapters (the session's `ArmBank`);
analyses use the first seed of the study. The analyses themselves are pure functions in
`lorafair.analysis`; this module only feeds them and writes their results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from lorafair.analysis import lens as lens_mod
from lorafair.analysis import weights as W
from lorafair.analysis.shift import compute_lens, compute_pairwise_kl
from lorafair.arms import kinds
from lorafair.arms.names import adapter_key, bank_name
from lorafair.models.lm import length_order
from lorafair.store import rundir as store
from lorafair.study import stages
from lorafair.study.session import Request, Session
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


@dataclass
class Inputs:
    """What the analyses of one run share: the session, the arms of the first seed by bank name, the
    reference arms, the encoded sequence sets and their batches, and the results of the analyses
    before this one (by stage name)."""

    session: Session
    seed: int
    names: dict[str, str]  # arm -> its name in the bank
    arms: list[str]
    reference: tuple[str, str | None]
    bank: Any
    sets: dict[str, list[dict]]
    batches: dict[str, list[dict]]
    device: Any
    done: dict[str, Any] = field(default_factory=dict)


def run(session: Session, request: Request) -> dict:
    """The analyses stage: every analysis of the table that the study turns on, on the finished arms
    of the study's first seed, each written to the run's analysis folder. Returns {seed, arms,
    weights (when analysed), timings}."""
    todo = [s for s in stages.analyses() if stages.is_on(s, session.study)]
    seed = session.study.seeds[0]
    done = [arm for arm, s in session.trained(session.arms) if s == seed]
    if not done:
        session.log("analyses: no finished arms; skipped")
        return {}
    if not todo:
        session.log("analyses: every analysis is turned off in the study; skipped")
        return {}
    inp = prepare(session, done, seed)
    out: dict = {"seed": seed, "arms": inp.arms}
    forward = _forward_seconds(inp)
    timings = {}
    for s in todo:
        t = time.perf_counter()
        inp.done[s.name] = stages.resolve(s.fn)(inp)
        timings[s.name] = time.perf_counter() - t
    if inp.done.get("weights") is not None:
        out["weights"] = inp.done["weights"]
    out["timings"] = timings
    _write_timings(session.rd, timings, forward, len(inp.arms), session.log)
    return out


def prepare(session: Session, done: list, seed: int) -> Inputs:
    """The inputs the analyses share: full fine-tuning loaded into the bank, the held-out examples
    and the task's KL prompts encoded and batched."""
    study, ctx, task = session.study, session.ctx, session.task
    a = study.analyses
    bank = session.shared_bank(session.arms)
    names = {arm.name: bank_name(arm.name, seed) for arm in done}
    has_full = "full" in names
    if has_full:
        bank.add_full(session.load_full(seed))
    dev = next(bank.base.parameters()).device
    tok = ctx.tokenizer
    splits = session.corpus.splits
    # token-posterior KL: held-out fine-tuning examples (prompt + target) and evaluation prompts
    heldout = (splits.get("heldout") or splits["val"])[: a.n_sequences]
    sets = {"heldout": encode(tok, heldout, study.training.max_length)}
    prompts = task.kl_prompts(ctx)[: a.n_sequences]
    if prompts:
        ids = [tok(p)["input_ids"][: study.training.max_length] for p in prompts]
        sets["prompts"] = [{"input_ids": x, "labels": [-100] * len(x)} for x in ids]
    batches = {name: _batches(items, tok.pad_token_id, a.batch_size, dev) for name, items in sets.items() if items}
    return Inputs(session, seed, names, list(names), ("base", "full" if has_full else None), bank, sets, batches, dev)


def _logits_fn(inp: Inputs):
    def logits_fn(arm, ids, attn):
        return inp.bank.logits(inp.names[arm], ids, attn)

    return logits_fn


def kl(inp: Inputs) -> dict:
    """Pairwise token-posterior KL per set of sequences; writes kl.json and kl_tokens.parquet."""
    study, rd, names, bank = inp.session.study, inp.session.rd, inp.names, inp.bank

    def logits_many(group, ids, attn):
        got = bank.logits_many([names[a] for a in group], ids, attn)
        return {a: got[names[a]] for a in group}

    out, rows_all = {}, []
    for set_name, set_batches in inp.batches.items():
        res = compute_pairwise_kl(_logits_fn(inp), inp.arms, set_batches, reference=inp.reference,
                                  n_boot=study.evaluation.bootstrap, logits_many=logits_many,
                                  group_rows=study.analyses.batch_size * 4)
        out[set_name] = res["summary"]
        rows_all.append(res["rows"].assign(set=set_name))
    if rows_all:
        store.write_parquet(rd.analysis_path("kl_tokens", "parquet"), pd.concat(rows_all, ignore_index=True))
    main = out.get("heldout") or next(iter(out.values()), None)
    store.write_json(rd.analysis_path("kl"), {"arms": (main or {}).get("arms", {}), "sets": out,
                                               "reference": list(inp.reference), "seed": inp.seed})
    return out


def lens(inp: Inputs) -> None:
    """The Logit Lens on the evaluation prompts (or held-out prompts); writes lens.json/.parquet."""
    session = inp.session
    a, tok = session.study.analyses, session.ctx.tokenizer
    lens_items = inp.sets.get("prompts") or [{"input_ids": x["input_ids"], "labels": x["labels"]}
                                             for x in inp.sets["heldout"]]
    _lens_stage(session.study, session.rd, tok, inp.bank, inp.names, inp.arms,
                _batches(lens_items, tok.pad_token_id, a.batch_size, inp.device, False), lens_items,
                inp.reference)


def weights(inp: Inputs) -> dict | None:
    """The weight-space diagnostics (:func:`weight_analysis`); needs full fine-tuning."""
    if "full" not in inp.names:
        return None
    s = inp.session
    # ΔW needs the float32 weights: a bf16 bank's rounding would swamp full fine-tuning's small update
    f32 = None if inp.bank.dtype == torch.float32 else (s.ctx.load_base(), s.load_full(inp.seed))
    return weight_analysis(s.study, s.rd, s.arms, inp.bank, inp.names, (inp.done.get("kl") or {}).get("heldout"), f32)


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


def _forward_seconds(inp: Inputs) -> float:
    """Mean wall seconds of one no-gradient forward pass over the first set's batches per arm (after
    one warm-up batch): the unit in which the analyses' cost is reported."""
    logits_fn, arms, batches = _logits_fn(inp), inp.arms, next(iter(inp.batches.values()), [])
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
    lora_arms = [arm for arm in study_arms if kinds.is_lora(arm) and arm.name in names]
    # the study's ranks plus every power of two up to 512, so the spectrum can name a rank beyond the grid
    grid = sorted({arm.rank for arm in study_arms if kinds.is_lora(arm)} | {2**i for i in range(10)})
    targets = set(lora_arms[0].target_modules) if lora_arms else None
    base_m, full_m = float32_models or (bank.base, bank.full)
    base_w = {n: m.weight.detach().float().cpu().clone() for n, m in _linears(base_m, targets)}
    full_w = {n: m.weight.detach().float().cpu() for n, m in _linears(full_m, targets)}
    lora = {arm.name: (arm.rank, W.peft_deltas(bank.peft, adapter_key(names[arm.name]))) for arm in lora_arms}
    shift = {}
    if kl_summary:
        for arm in lora_arms:
            if kinds.variant(arm).shift_reference:
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
