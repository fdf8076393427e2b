"""Runs the shared analyses on a study's arms: token-posterior KL between arms, the Logit Lens per
layer, and the weight-space diagnostics of each update, then the rank recommendation.

The base model is loaded once and LoRA arms are swapped in as adapters (the runner's `ArmBank`);
analyses use the first seed of the study. The analyses themselves are pure functions in
`lorafair.analysis`; this module only feeds them and writes their results.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from lorafair import store
from lorafair.arm_names import adapter_key, bank_name
from lorafair.analysis import lens as lens_mod
from lorafair.analysis import weights as W
from lorafair.analysis.shift import compute_lens, compute_pairwise_kl
from lorafair.train import collate, encode


def _batches(items: list[dict], pad_id: int, batch_size: int, device) -> list[dict]:
    out = []
    for i in range(0, len(items), batch_size):
        b = collate(items[i:i + batch_size], pad_id)
        out.append({"input_ids": b["input_ids"].to(device), "attention_mask": b["attention_mask"].to(device),
                    "loss_mask": (b["labels"] != -100).long().to(device)})
    return out


def run_analyses(runner, splits: dict[str, list[dict]]) -> dict:
    study, rd, ctx = runner.study, runner.rd, runner.ctx
    a = study.analyses
    seed = study.seeds[0]
    done = [(arm, s) for arm, s in runner.trained(runner.arms) if s == seed]
    if not done:
        runner.log("analyses: no finished arms; skipped")
        return {}
    bank = getattr(runner, "_bank", None) or runner.bank(runner.arms)
    names = {arm.name: bank_name(arm.name, seed) for arm, _ in done}
    has_full = "full" in names
    if has_full:
        bank.add_full(runner.load_full(seed))
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

    # ---- token-posterior KL: held-out fine-tuning examples (prompt + target) and evaluation prompts
    heldout = (splits.get("heldout") or splits["val"])[: a.n_sequences]
    kl = {}
    rows_all = []
    sets = {"heldout": encode(tok, heldout, study.training.max_length)}
    prompts = runner.task.kl_prompts(ctx)[: a.n_sequences]
    if prompts:
        ids = [tok(p)["input_ids"][: study.training.max_length] for p in prompts]
        sets["prompts"] = [{"input_ids": x, "labels": [-100] * len(x)} for x in ids]
    batches = {name: _batches(items, tok.pad_token_id, a.batch_size, dev) for name, items in sets.items() if items}
    forward = _forward_seconds(logits_fn, arms, next(iter(batches.values()), []))
    t = time.perf_counter()
    for set_name, set_batches in batches.items():
        res = compute_pairwise_kl(logits_fn, arms, set_batches, reference=reference, n_boot=study.evaluation.bootstrap,
                                  logits_many=logits_many, group_rows=a.batch_size * 4)
        kl[set_name] = res["summary"]
        rows_all.append(res["rows"].assign(set=set_name))
    if rows_all:
        store.write_parquet(rd.analysis_path("kl_tokens", "parquet"), pd.concat(rows_all, ignore_index=True))
    main = kl.get("heldout") or next(iter(kl.values()), None)
    store.write_json(rd.analysis_path("kl"), {"arms": (main or {}).get("arms", {}), "sets": kl,
                                               "reference": list(reference), "seed": seed})
    timings["kl"] = time.perf_counter() - t

    # ---- Logit Lens on the evaluation prompts (or held-out prompts)
    if a.lens:
        t = time.perf_counter()
        lens_items = sets.get("prompts") or [{"input_ids": x["input_ids"], "labels": x["labels"]} for x in sets["heldout"]]
        tox_ids, mapping = lens_mod.toxic_token_ids(tok)
        store.write_json(rd.analysis_path("toxic_tokens"), {"ids": tox_ids, "mapping": mapping,
                                                            "source": "better-profanity word list"})

        def hidden_fn(arm, ids, attn):
            with bank.use(names[arm]) as m:
                return lens_mod.lens_hidden(m, ids, attn)

        def project_fn(arm, h):
            with bank.use(names[arm]) as m, torch.no_grad():
                return lens_mod.project(m, h)

        res = compute_lens(hidden_fn, project_fn, arms, _batches(lens_items, tok.pad_token_id, a.batch_size, dev),
                           tox_ids, reference=reference, n_examples=a.lens_examples)
        store.write_parquet(rd.analysis_path("lens", "parquet"), res["rows"])
        examples = {}
        for arm, ex in res["examples"].items():
            examples[arm] = [[[tok.decode([i]) for i in layer] for layer in seq] for seq in ex["ids"]]
        store.write_json(rd.analysis_path("lens"), {"summary": res["summary"], "top_tokens": examples,
                                                     "top_probs": {k: v["probs"] for k, v in res["examples"].items()},
                                                     "example_prompts": [tok.decode(x["input_ids"]) for x in lens_items[: a.lens_examples]]})
        timings["lens"] = time.perf_counter() - t

    # ---- weight space
    if a.weights and has_full:
        t = time.perf_counter()
        out["weights"] = weight_analysis(runner, bank, names, kl.get("heldout"))
        timings["weights"] = time.perf_counter() - t
    out["timings"] = timings
    unit = forward * len(arms)
    store.write_json(rd.analysis_path("timings"), {
        "seconds": timings, "forward_pass_s": forward, "n_arms": len(arms),
        "relative_to_forward": {k: v / unit for k, v in timings.items()} if unit > 0 else {},
        "note": "relative_to_forward: each analysis's wall time over the time of one forward pass per arm "
                "(no gradients) over the held-out analysis sequences"})
    runner.log("analyses: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
               + f" (one forward pass per arm: {unit:.1f}s)")
    return out


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


def weight_analysis(runner, bank, names: dict[str, str], kl_summary: dict | None) -> dict:
    """ΔW of full fine-tuning (spectrum, energy at each rank of the grid, effective rank) and of each
    LoRA arm (relative norm, subspace overlap with full's top-r directions, intruder dimensions)."""
    study, rd = runner.study, runner.rd
    lora_arms = [arm for arm in runner.arms if arm.type == "lora" and arm.name in names]
    # the study's ranks plus every power of two up to 512, so the spectrum can name a rank beyond the grid
    grid = sorted({arm.rank for arm in runner.arms if arm.type == "lora"} | {2**i for i in range(10)})
    targets = set(lora_arms[0].target_modules) if lora_arms else None
    base_w = {n: m.weight.detach().float().cpu().clone() for n, m in _linears(bank.base, targets)}
    full_w = {n: m.weight.detach().float().cpu() for n, m in _linears(bank.full, targets)}
    rows = []
    spectra = {}  # per matrix: full update, its spectrum, its SVD, and W_base's left singular vectors
    for name, wb in base_w.items():
        if name not in full_w:
            continue
        d = full_w[name] - wb
        sp = W.delta_spectrum(d, grid)
        u_base = torch.linalg.svd(wb, full_matrices=False)[0]
        spectra[name] = (d, sp, torch.linalg.svd(d, full_matrices=False), u_base)
        rows.append({"arm": "full", "module": name, "sq_norm": sp["sq_norm"], "effective_rank": sp["effective_rank"],
                     "intruders": W.intruder_dimensions(wb, full_w[name], u_base=u_base),
                     **{f"energy_r{r}": e for r, e in sp["energy_at_rank"].items()}})
    for arm in lora_arms:
        deltas = W.peft_deltas(bank.peft, adapter_key(names[arm.name]))
        for name, dl in deltas.items():
            if name not in spectra:
                continue
            d_full, _, full_svd, u_base = spectra[name]
            cmp = W.lora_vs_full(dl, d_full, arm.rank, full_svd=full_svd)
            rows.append({"arm": arm.name, "module": name, "rank": arm.rank, "sq_norm": float(dl.square().sum()),
                         "intruders": W.intruder_dimensions(base_w[name], base_w[name] + dl, u_base=u_base), **cmp})
    df = pd.DataFrame(rows)
    store.write_parquet(rd.analysis_path("weights", "parquet"), df)
    full_rows = df[df["arm"] == "full"]
    energies = [spectra[n][1]["energy_at_rank"] for n in full_rows["module"]]
    sq = full_rows["sq_norm"].tolist()
    w = np.asarray(sq) / max(sum(sq), 1e-30)
    energy = {r: float(np.dot([e[r] for e in energies], w)) for r in grid}
    summary = {"full_spectrum": {"energy_at_rank": energy, "effective_rank_mean": float(full_rows["effective_rank"].mean()),
                                 "intruders_total": int(full_rows["intruders"].sum()), "n_matrices": len(full_rows),
                                 "weighting": "energy shares weighted by each matrix's squared Frobenius norm"},
               "arms": {}, "by_type": {}, "by_depth": {}}
    for arm in lora_arms:
        r = df[df["arm"] == arm.name]
        if r.empty:
            continue
        summary["arms"][arm.name] = {"rank": arm.rank, "rel_norm": float(np.sqrt(r["sq_norm"].sum() / max(sum(sq), 1e-30))),
                                     "rel_norm_mean": float(r["rel_norm"].mean()), "col_overlap": float(r["col_overlap"].mean()),
                                     "row_overlap": float(r["row_overlap"].mean()), "intruders_total": int(r["intruders"].sum())}
        agg = W.aggregate(r[["module", "rel_norm", "col_overlap", "row_overlap", "intruders"]])
        summary["by_type"][arm.name] = agg["by_type"].to_dict("records")
        summary["by_depth"][arm.name] = agg["by_depth"].to_dict("records")
    agg_full = W.aggregate(full_rows[["module", "sq_norm", "effective_rank", "intruders"]])
    summary["by_type"]["full"] = agg_full["by_type"].to_dict("records")
    summary["by_depth"]["full"] = agg_full["by_depth"].to_dict("records")
    thr = study.analyses.energy_threshold
    shift = {}
    if kl_summary:
        for arm in lora_arms:
            if arm.variant == "plain":
                sc = (kl_summary["arms"].get(arm.name) or {}).get("shift_captured")
                if sc:
                    shift[arm.rank] = sc["value"]
    spec_rank = W.rank_for_energy(energies, sq, thr)
    meas_rank = W.rank_for_shift(shift, thr)
    summary["recommendation"] = {
        "threshold": thr,
        "rank_from_spectrum": spec_rank,
        "rank_measured": meas_rank,
        "ranks_tried": sorted(shift),
        "agree": (spec_rank == meas_rank) if spec_rank is not None and meas_rank is not None else None,
        "note": "rank_from_spectrum: smallest rank of the grid whose best rank-r approximation keeps the threshold "
                "share of full fine-tuning's update energy; rank_measured: smallest LoRA rank whose shift captured "
                "(held-out KL) reaches the threshold; None where no rank of the grid does",
    }
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
