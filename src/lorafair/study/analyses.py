"""The analyses stage: the shared analyses of a study's arms, each an entry of the table of stages
(lorafair.study.stages) turned on by its study flag: token-posterior KL between arms, the Logit Lens
per layer, and the weight-space diagnostics of each update, then the rank recommendation.

The base model is loaded once and LoRA arms are swapped in as adapters (the session's `ArmBank`);
the KL analysis covers every seed with full fine-tuning (pooled over seeds, beside the noise floor
between two seeds of full), the Logit Lens and the weight analysis the first seed of the study. The analyses themselves are pure functions in
`lorafair.analysis`; this module only feeds them and writes their results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from lorafair.analysis import lens as lens_mod
from lorafair.analysis import seeds as seeds_mod
from lorafair.analysis import weights as W
from lorafair.analysis.shift import compute_lens, compute_pairwise_kl
from lorafair.arms import kinds
from lorafair.arms.names import adapter_key, bank_name
from lorafair.models import precision
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
    """Pairwise token-posterior KL per set of sequences on every seed with full fine-tuning (each
    seed's arms against that seed's full), pooled over seeds with crossed intervals and set beside
    the noise floor, KL between two seeds of full (``analysis.seeds``); writes kl.json (``sets``: the
    pooled summaries, ``seeds``: each seed's own), kl_sequences.parquet (per seed, set, arm and
    sequence) and kl_tokens.parquet (per token, first seed).
    Returns the pooled summary per set."""
    session = inp.session
    study, rd, bank = session.study, session.rd, inp.bank
    seeds = _kl_seeds(session, inp)
    per_seed: dict[int, dict] = {}
    seq_frames, token_rows = [], []
    first_full = bank.full
    floor = None  # full fine-tuning of the next seed: the noise floor of this seed, the reference of the next
    try:
        for i, seed in enumerate(seeds):
            names = _seed_names(session, inp, seed)
            if floor is not None:
                bank.full = floor
            if len(seeds) < 2:
                floor = None
            elif i + 1 < len(seeds):
                floor = precision.for_inference(session.load_full(seeds[i + 1]), bank.dtype).eval()
            else:  # the last seed's floor is the first seed's full, already loaded
                floor = first_full
            per_seed[seed] = _kl_one_seed(inp, names, floor, seq_frames, token_rows if seed == inp.seed else None, seed)
    finally:
        bank.full = first_full
    if token_rows:
        store.write_parquet(rd.analysis_path("kl_tokens", "parquet"), pd.concat(token_rows, ignore_index=True))
    pooled, frames = {}, []
    for set_name in inp.batches:
        frame = pd.concat([f for f in seq_frames if f.attrs["set"] == set_name], ignore_index=True)
        pooled[set_name] = seeds_mod.pool_kl(frame, inp.arms)
        frames.append(frame.assign(set=set_name))
    if frames:
        store.write_parquet(rd.analysis_path("kl_sequences", "parquet"), pd.concat(frames, ignore_index=True))
    main = pooled.get("heldout") or next(iter(pooled.values()), None)
    store.write_json(rd.analysis_path("kl"), {
        "arms": (main or {}).get("arms", {}), "noise_floor": (main or {}).get("noise_floor"), "sets": pooled,
        "seeds": {str(s): v for s, v in per_seed.items()}, "reference": list(inp.reference), "seed": inp.seed,
        "n_seeds": len(seeds), "floor_arm": seeds_mod.FLOOR,
        "note": "arms/sets: pooled over the seeds each arm has (crossed intervals over seeds and sequences); "
                "noise_floor: KL(full of seed s || full of the next seed), the distance between two runs of full "
                "fine-tuning; beyond_floor: KL(full||arm) minus the floor, paired by seed and sequence"})
    return pooled


def _kl_seeds(session: Session, inp: Inputs) -> list[int]:
    """The seeds the KL analysis covers: the first seed, then every other seed with full fine-tuning
    finished (the references are per seed); just the first when the study has no full arm."""
    if inp.reference[1] is None:
        return [inp.seed]
    full = [s for arm, s in session.trained(session.arms) if kinds.is_full(arm)]
    return [inp.seed] + sorted(s for s in set(full) if s != inp.seed)


def _seed_names(session: Session, inp: Inputs, seed: int) -> dict[str, str]:
    """arm -> bank name of the arms finished at `seed` (base and full by their reference names)."""
    if seed == inp.seed:
        return dict(inp.names)
    return {arm.name: bank_name(arm.name, seed) for arm, s in session.trained(session.arms)
            if s == seed or not kinds.trains(arm)}


def _kl_one_seed(inp: Inputs, names: dict[str, str], floor, seq_frames: list, token_rows: list | None,
                 seed: int) -> dict:
    """One seed: compute_pairwise_kl of its arms (and the noise-floor model, as the arm FLOOR) against
    base and that seed's full; appends per-sequence frames (``attrs["set"]``) and, for the first
    seed, the per-token rows. Returns {set: summary}."""
    study, bank = inp.session.study, inp.bank

    def logits_fn(arm, ids, attn):
        if arm == seeds_mod.FLOOR:
            with torch.no_grad():
                return floor(input_ids=ids, attention_mask=attn).logits.float()
        return bank.logits(names[arm], ids, attn)

    def logits_many(group, ids, attn):
        got = bank.logits_many([names[a] for a in group if a in names], ids, attn)
        return {a: (got[names[a]] if a in names else logits_fn(a, ids, attn)) for a in group}

    arms = [a for a in inp.arms if a in names] + ([seeds_mod.FLOOR] if floor is not None else [])
    out = {}
    for set_name, set_batches in inp.batches.items():
        res = compute_pairwise_kl(logits_fn, arms, set_batches, reference=inp.reference,
                                  n_boot=study.evaluation.bootstrap, logits_many=logits_many,
                                  group_rows=study.analyses.batch_size * 4)
        out[set_name] = res["summary"]
        frame = res["sequences"].assign(seed=seed)
        frame.attrs["set"] = set_name
        seq_frames.append(frame)
        if token_rows is not None:
            token_rows.append(res["rows"].loc[res["rows"]["arm"] != seeds_mod.FLOOR].assign(set=set_name))
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
