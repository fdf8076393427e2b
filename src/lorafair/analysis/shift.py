"""Streaming comparison of arms: token-posterior KL between arms and the Logit Lens per layer.

Models are injected as callables, so this module knows nothing about how an arm is loaded:

- ``logits_fn(arm, input_ids, attention_mask) -> logits [b, s, V]``
- ``hidden_fn(arm, input_ids, attention_mask) -> list of [b, s, d]``, one per layer, each already
  passed through the arm's final norm (see ``lens.lens_hidden``)
- ``project_fn(arm, hidden [b, s, d]) -> logits [b, s, V]`` (the arm's output head)

Memory: work goes batch by batch. Per batch, the reference logits (base, and full when given) are
computed once and reused for every arm; at most one batch of logits per model is alive at any
time, and nothing kept across batches scales with the vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lorafair.analysis.kl import (
    DEFAULT_CHUNK,
    kl_against,
    kl_pair,
    log_probs,
    next_token_mask,
    shift_captured,
    summarize,
    target_logprob,
)
from lorafair.errors import UserError

KL_COLUMNS = ("kl_arm_base", "kl_base_arm", "kl_full_arm", "kl_arm_full")


def _references(reference: tuple[str | None, str | None]) -> tuple[str, str | None]:
    if len(reference) != 2 or not reference[0]:
        raise UserError(
            f"reference={reference!r}: give (base_arm, full_arm) with a base arm name; "
            "use (\"base\", None) when there is no full fine-tuning arm"
        )
    return reference[0], reference[1] or None


def _batch_tensors(batch: dict, where: str) -> tuple[Tensor, Tensor, Tensor | None]:
    if "input_ids" not in batch:
        raise UserError(f"{where}: batch has no 'input_ids'; give dicts with input_ids and attention_mask")
    ids = batch["input_ids"]
    attn = batch.get("attention_mask")
    if attn is None:
        attn = torch.ones_like(ids)
    if attn.shape != ids.shape:
        raise UserError(f"{where}: attention_mask shape {tuple(attn.shape)} != input_ids {tuple(ids.shape)}")
    return ids, attn, batch.get("loss_mask")


def compute_pairwise_kl(
    logits_fn: Callable[[str, Tensor, Tensor], Tensor],
    arms: list[str],
    batches: Iterable[dict],
    reference: tuple[str | None, str | None] = ("base", "full"),
    n_boot: int = 1000,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    logits_many: Callable[[list[str], Tensor, Tensor], dict[str, Tensor]] | None = None,
    group_rows: int = 64,
) -> dict[str, Any]:
    """KL between every arm and the references, per token, summarised per arm.

    logits_many (optional): the logits of several arms on one batch at once (e.g. LoRA adapters
    sharing a forward pass); the non-reference arms are then fetched in groups of up to
    `group_rows` // batch rows. Results are the same as with `logits_fn` alone.

    batches: dicts with ``input_ids`` [b, s], ``attention_mask`` [b, s] (1 = real token) and
    optionally ``loss_mask`` [b, s] (1 = target token, for the target log-likelihood) and ``seq`` [b]
    (each row's sequence number, when sequences are batched out of order, e.g. by length: every
    result is then that of the sequences in their own order). Tokens counted: position t with a real token t and a real token t+1 (it predicts a real next
    token). For each arm a: KL(a||base), KL(base||a), KL(full||a), KL(a||full).

    Returns a dict:

    - ``summary``: ``{arm: {kl_arm_base: {mean, median, p90, n}, ... (the four directions, over
      tokens), shift_captured: {value, lo, hi, n} (over sequences, None without full),
      target_logprob: mean over sequences of the per-sequence mean (None without loss_mask)}}``,
      plus ``n_sequences`` and ``n_tokens``.
    - ``rows``: DataFrame, one row per (arm, seq, pos) with the four KL columns (NaN for the full
      directions when there is no full reference); ``seq`` numbers sequences across batches.
    - ``sequences``: DataFrame, one row per (arm, seq): token count, per-sequence mean of each
      direction, and ``target_logprob``.
    """
    base_name, full_name = _references(reference)
    if not arms:
        raise UserError("compute_pairwise_kl: no arms given; list the arms to compare, e.g. ['base', 'full', 'lora-r8']")
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("arm", "seq", "pos", *KL_COLUMNS)}
    seqs: dict[str, list[np.ndarray]] = {k: [] for k in ("arm", "seq", "n_tokens", *KL_COLUMNS, "target_logprob")}
    full_base_seq: list[np.ndarray] = []  # per-sequence mean KL(full || base)
    seq_offset = 0
    has_loss_mask = False
    for bi, batch in enumerate(batches):
        ids, attn, loss_mask = _batch_tensors(batch, f"batch {bi}")
        has_loss_mask = has_loss_mask or loss_mask is not None
        seq_ids = _seq_ids(batch, seq_offset, ids.shape[0])
        with torch.no_grad():
            _batch_kls(logits_fn, logits_many, arms, (base_name, full_name), ids, attn, loss_mask, seq_ids,
                       chunk_size, group_rows, rows, seqs, full_base_seq)
        seq_offset += ids.shape[0]
    if seq_offset == 0:
        raise UserError("compute_pairwise_kl: the batches were empty; give at least one held-out sequence")
    order = {a: i for i, a in enumerate(arms)}
    rows_df = _sorted(pd.DataFrame({k: np.concatenate(v) for k, v in rows.items()}), order, ["seq", "pos"])
    seq_df = _sorted(pd.DataFrame({k: np.concatenate(v) for k, v in seqs.items()}), order, ["seq"])
    fb = None
    if full_base_seq:  # per-sequence KL(full || base) in sequence order, as the arms' rows are
        fb_seq = np.concatenate([q for q, _ in full_base_seq])
        fb = np.concatenate([v for _, v in full_base_seq])[np.argsort(fb_seq, kind="stable")]
    summary = _kl_summary(arms, rows_df, seq_df, fb, has_loss_mask, n_boot, seed)
    summary["n_sequences"] = int(seq_offset)
    return {"summary": summary, "rows": rows_df, "sequences": seq_df}


def _batch_kls(logits_fn, logits_many, arms: list[str], refs: tuple[str, str | None], ids: Tensor, attn: Tensor,
               loss_mask: Tensor | None, seq_ids: np.ndarray, chunk_size: int, group_rows: int,
               rows: dict[str, list], seqs: dict[str, list], full_base_seq: list) -> None:
    """One batch: every arm's four KL directions per token and per sequence, appended to ``rows`` and
    ``seqs``; (sequence numbers, KL(full || base) per sequence) appended to ``full_base_seq``.
    seq_ids: the number of each row's sequence."""
    base_name, full_name = refs
    b = ids.shape[0]
    valid = next_token_mask(attn).cpu()
    bidx, pidx = valid.nonzero(as_tuple=True)
    counts = valid.sum(1).numpy()
    # references as float32 log-probabilities, once per batch (log_softmax is idempotent,
    # so the KL and log-likelihood helpers accept them in place of logits)
    ref = {base_name: log_probs(logits_fn(base_name, ids, attn), chunk_size)}
    if full_name is not None:
        ref[full_name] = log_probs(logits_fn(full_name, ids, attn), chunk_size)
        kl_fb, _ = kl_pair(ref[full_name], ref[base_name], chunk_size)
        full_base_seq.append((seq_ids, _seq_mean(kl_fb.cpu(), valid)))
    others = [a for a in arms if a not in ref]
    per_group = max(1, group_rows // b) if logits_many is not None else 1
    fetched: dict[str, Tensor] = {}
    for arm in arms:
        if arm in ref:
            logits = ref[arm]
        else:
            if arm not in fetched:
                group = others[others.index(arm):][:per_group]
                fetched = (logits_many(group, ids, attn) if len(group) > 1
                           else {arm: logits_fn(arm, ids, attn)})
            logits = fetched.pop(arm)
        kls = _arm_kls(logits, ref[base_name], ref.get(full_name), chunk_size)
        for col, val in kls.items():
            rows[col].append(val[bidx, pidx].numpy())
            seqs[col].append(_seq_mean(val, valid))
        rows["arm"].append(np.full(bidx.numel(), arm, dtype=object))
        rows["seq"].append(seq_ids[bidx.numpy()])
        rows["pos"].append(pidx.numpy())
        seqs["arm"].append(np.full(b, arm, dtype=object))
        seqs["seq"].append(seq_ids)
        seqs["n_tokens"].append(counts)
        lp = (target_logprob(logits, ids, loss_mask, chunk_size).cpu().numpy() if loss_mask is not None
              else np.full(b, np.nan))
        seqs["target_logprob"].append(lp)
        del logits, kls
    del ref


def _seq_ids(batch: dict, offset: int, b: int) -> np.ndarray:
    """Each row's sequence number: the batch's ``seq`` (rows batched out of order, e.g. by length)
    or the running count of rows."""
    if batch.get("seq") is None:
        return np.arange(offset, offset + b)
    seq = np.asarray(batch["seq"].cpu() if isinstance(batch["seq"], Tensor) else batch["seq"], dtype=np.int64)
    if seq.shape != (b,):
        raise UserError(f"compute_pairwise_kl: batch 'seq' has shape {seq.shape}; give one number per row ({b})")
    return seq


def _kl_summary(arms: list[str], rows_df: pd.DataFrame, seq_df: pd.DataFrame, fb: np.ndarray | None,
                has_loss_mask: bool, n_boot: int, seed: int) -> dict[str, Any]:
    """Per arm: each direction over tokens, shift captured over sequences, the target log-likelihood."""
    n_tokens = int(seq_df.loc[seq_df["arm"] == arms[0], "n_tokens"].sum())
    summary: dict[str, Any] = {"n_sequences": 0, "n_tokens": n_tokens, "arms": {}}
    for arm in arms:
        r = rows_df[rows_df["arm"] == arm]
        s = seq_df[seq_df["arm"] == arm].sort_values("seq")
        entry: dict[str, Any] = {col: summarize(r[col].to_numpy()) for col in KL_COLUMNS}
        entry["shift_captured"] = (
            shift_captured(s["kl_full_arm"].to_numpy(), fb, n_boot=n_boot, seed=seed) if fb is not None else None
        )
        lp = s["target_logprob"].to_numpy()
        entry["target_logprob"] = float(np.nanmean(lp)) if has_loss_mask and np.isfinite(lp).any() else None
        summary["arms"][arm] = entry
    return summary


def _sorted(df: pd.DataFrame, arm_order: dict[str, int], keys: list[str]) -> pd.DataFrame:
    """Rows ordered by arm (as given), then keys; independent of how the data was batched."""
    rank = df["arm"].map(arm_order)
    return df.assign(_r=rank).sort_values(["_r", *keys], kind="stable").drop(columns="_r").reset_index(drop=True)


def _seq_mean(values: Tensor, valid: Tensor) -> np.ndarray:
    """Mean of values [b, s] over the valid positions of each row: [b] (NaN where none)."""
    m = valid.to(torch.float32)
    count = m.sum(1)
    total = (values.to(torch.float32) * m).sum(1)
    out = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
    return out.numpy().astype(np.float64)


def _arm_kls(logits: Tensor, base: Tensor, full: Tensor | None, chunk_size: int) -> dict[str, Tensor]:
    """The four KL directions of one arm against the references (log-probs), each [b, s] on CPU."""
    pairs = kl_against(logits, [base] if full is None else [base, full], chunk_size)
    ab, ba = pairs[0]
    out = {"kl_arm_base": ab.cpu(), "kl_base_arm": ba.cpu()}
    if full is not None:
        af, fa = pairs[1]
        out["kl_full_arm"], out["kl_arm_full"] = fa.cpu(), af.cpu()
    else:
        nan = torch.full_like(out["kl_arm_base"], float("nan"))
        out["kl_full_arm"], out["kl_arm_full"] = nan, nan.clone()
    return out


# ----------------------------------------------------------------------------- Logit Lens


def compute_lens(
    hidden_fn: Callable[[str, Tensor, Tensor], list[Tensor]],
    project_fn: Callable[[str, Tensor], Tensor],
    arms: list[str],
    batches: Iterable[dict],
    toxic_ids: Tensor | list[int],
    reference: tuple[str | None, str | None] = ("base", "full"),
    n_examples: int = 0,
    k: int = 5,
    chunk_size: int = DEFAULT_CHUNK,
) -> dict[str, Any]:
    """Logit Lens per arm and layer: KL to the same layer of base and of full, toxic mass.

    Per layer l, with p_arm^l = softmax(project_fn(arm, hidden_fn(arm)[l])):

    - ``kl_base`` = mean over real tokens of KL(p_arm^l || p_base^l); ``kl_full`` likewise with full.
    - ``toxic_mass_last``: probability on ``toxic_ids`` at the LAST real position of each sequence
      (the next-token distribution a generation would draw from), averaged over sequences.
    - ``toxic_mass_mean``: the same mass averaged over ALL real positions (attention_mask == 1),
      pooled over sequences.

    Real tokens here are all positions with attention_mask == 1 (the last one included, unlike
    ``compute_pairwise_kl``: lens inputs are usually prompts whose last prediction matters most).
    ``n_examples`` > 0 also records, for the first ``n_examples`` sequences, the top-``k`` tokens of
    every layer at the last real position.

    Returns ``{"summary": {arm: [ {layer, kl_base, kl_full, toxic_mass_last, toxic_mass_mean}, ... ]},
    "rows": DataFrame (arm, seq, layer, n_tokens, kl_base, kl_full, toxic_mass_last, toxic_mass_mean),
    "examples": {arm: {"ids": [n, L, k], "probs": [n, L, k]} }}`` (lists, JSON-ready).
    """
    base_name, full_name = _references(reference)
    if not arms:
        raise UserError("compute_lens: no arms given; list the arms to compare")
    tox = torch.as_tensor(toxic_ids, dtype=torch.long).unique()
    cols = ("arm", "seq", "layer", "n_tokens", "kl_base", "kl_full", "toxic_mass_last", "toxic_mass_mean")
    rows: dict[str, list[np.ndarray]] = {c: [] for c in cols}
    examples: dict[str, dict[str, list]] = {a: {"ids": [], "probs": []} for a in arms}
    seq_offset = 0
    n_layers: int | None = None
    for bi, batch in enumerate(batches):
        ids, attn, _ = _batch_tensors(batch, f"batch {bi}")
        with torch.no_grad():
            n_layers = _lens_batch(hidden_fn, project_fn, arms, (base_name, full_name), ids, attn, tox, seq_offset,
                                   max(0, min(ids.shape[0], n_examples - seq_offset)), k, chunk_size, rows, examples)
        seq_offset += ids.shape[0]
    if seq_offset == 0:
        raise UserError("compute_lens: the batches were empty; give at least one sequence")
    df = _sorted(pd.DataFrame({c: np.concatenate(v) for c, v in rows.items()}), {a: i for i, a in enumerate(arms)}, ["seq", "layer"])
    return {"summary": _lens_summary(df, arms, n_layers or 0), "rows": df,
            "examples": examples if n_examples > 0 else {}}


def _lens_batch(hidden_fn, project_fn, arms: list[str], refs: tuple[str, str | None], ids: Tensor, attn: Tensor,
                tox: Tensor, seq_offset: int, take_ex: int, k: int, chunk_size: int,
                rows: dict[str, list], examples: dict[str, dict[str, list]]) -> int:
    """One batch through every layer of every arm: per-sequence rows appended to ``rows``, the top
    tokens of the first ``take_ex`` sequences to ``examples``. Returns the number of layers."""
    base_name, full_name = refs
    b = ids.shape[0]
    real = attn.bool().cpu()
    last = _last_real(real)
    names = [base_name] + ([full_name] if full_name else []) + [a for a in arms if a not in (base_name, full_name)]
    hidden = {name: hidden_fn(name, ids, attn) for name in names}
    sizes = {len(h) for h in hidden.values()}
    if len(sizes) != 1:
        raise UserError(f"compute_lens: arms have different layer counts {sorted(sizes)}; compare arms of one base model")
    n_layers = sizes.pop()
    ex_layers: dict[str, list[tuple[Tensor, Tensor]]] = {a: [] for a in arms}
    for layer in range(n_layers):
        ref = {base_name: log_probs(project_fn(base_name, hidden[base_name][layer]), chunk_size)}
        if full_name:
            ref[full_name] = log_probs(project_fn(full_name, hidden[full_name][layer]), chunk_size)
        for arm in arms:
            logits = ref[arm] if arm in ref else project_fn(arm, hidden[arm][layer])
            pairs = kl_against(logits, [ref[base_name]] + ([ref[full_name]] if full_name else []), chunk_size)
            kl_b = pairs[0][0]
            kl_f = pairs[1][0] if full_name else None
            mass = _mass(logits, tox, chunk_size).cpu()
            rows["arm"].append(np.full(b, arm, dtype=object))
            rows["seq"].append(np.arange(seq_offset, seq_offset + b))
            rows["layer"].append(np.full(b, layer))
            rows["n_tokens"].append(real.sum(1).numpy())
            rows["kl_base"].append(_seq_mean(kl_b.cpu(), real))
            rows["kl_full"].append(_seq_mean(kl_f.cpu(), real) if kl_f is not None else np.full(b, np.nan))
            rows["toxic_mass_mean"].append(_seq_mean(mass, real))
            rows["toxic_mass_last"].append(mass[torch.arange(b), last].numpy().astype(np.float64))
            if take_ex:
                ex_layers[arm].append(_topk_last(logits[:take_ex], last[:take_ex], k))
            del logits
        del ref
    for arm in arms:
        if take_ex:
            tids = torch.stack([t[0] for t in ex_layers[arm]], 1)  # [n, L, k]
            tps = torch.stack([t[1] for t in ex_layers[arm]], 1)
            examples[arm]["ids"].extend(tids.tolist())
            examples[arm]["probs"].extend(tps.tolist())
    del hidden
    return n_layers


def _lens_summary(df: pd.DataFrame, arms: list[str], n_layers: int) -> dict[str, list[dict]]:
    """Per arm and layer: KL to base and full and the mean toxic mass (weighted by real tokens)."""
    summary: dict[str, list[dict]] = {}
    for arm in arms:
        per_layer = []
        for layer in range(n_layers):
            d = df[(df["arm"] == arm) & (df["layer"] == layer)]
            w = d["n_tokens"].to_numpy(dtype=np.float64)
            per_layer.append({"layer": layer, "kl_base": _wmean(d["kl_base"].to_numpy(), w),
                              "kl_full": _wmean(d["kl_full"].to_numpy(), w),
                              "toxic_mass_last": float(np.nanmean(d["toxic_mass_last"].to_numpy())),
                              "toxic_mass_mean": _wmean(d["toxic_mass_mean"].to_numpy(), w)})
        summary[arm] = per_layer
    return summary


def top_tokens_per_layer(
    hidden_fn: Callable[[str, Tensor, Tensor], list[Tensor]],
    project_fn: Callable[[str, Tensor], Tensor],
    arm: str,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    k: int = 5,
    tokenizer: Any = None,
) -> dict[str, list]:
    """Top-k next tokens of every layer at the last real position of each input.

    input_ids, attention_mask: [b, s]. Returns ``{"ids": [b, L, k], "probs": [b, L, k]}`` as nested
    lists, plus ``"tokens"`` (decoded strings, same nesting) when a tokenizer is given.
    """
    attn = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    last = _last_real(attn.bool().cpu())
    with torch.no_grad():
        hidden = hidden_fn(arm, input_ids, attn)
        per_layer = [_topk_last(project_fn(arm, h), last, k) for h in hidden]
    ids = torch.stack([t[0] for t in per_layer], 1)
    probs = torch.stack([t[1] for t in per_layer], 1)
    out: dict[str, list] = {"ids": ids.tolist(), "probs": probs.tolist()}
    if tokenizer is not None:
        out["tokens"] = [[[tokenizer.decode([t]) for t in layer] for layer in seq] for seq in out["ids"]]
    return out


def _last_real(real: Tensor) -> Tensor:
    """Index of the last real token per row of real [b, s] (0 for an all-padding row): [b]."""
    s = real.shape[1]
    pos = torch.arange(s).expand_as(real)
    return torch.where(real, pos, torch.zeros_like(pos)).max(1).values


def _mass(logits: Tensor, tox: Tensor, chunk_size: int) -> Tensor:
    """Probability on the token set tox per position: logits [b, s, V] -> [b, s] float32."""
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    tox = tox.to(flat.device)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for i in range(0, flat.shape[0], max(1, chunk_size)):
        lp = torch.log_softmax(flat[i : i + chunk_size].float(), -1)
        out[i : i + chunk_size] = lp[:, tox].exp().sum(-1) if tox.numel() else 0.0
    return out.reshape(lead)


def _topk_last(logits: Tensor, last: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k ids and probabilities at position last[i] of each row: logits [b, s, V] -> ([b, k], [b, k])."""
    rows = logits[torch.arange(logits.shape[0]), last.to(logits.device)].float()
    probs, ids = torch.softmax(rows, -1).topk(k, dim=-1)
    return ids.cpu(), probs.cpu()


def _wmean(values: np.ndarray, weights: np.ndarray) -> float:
    ok = np.isfinite(values) & (weights > 0)
    if not ok.any():
        return float("nan")
    return float(np.average(values[ok], weights=weights[ok]))
