"""Fine-tuning examples as tensors: tokenised prompt + completion with the loss on the completion's
tokens only, padded batches or packed rows (packing only where the model keeps packed sequences
apart), and the completion loss itself."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def encode(tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    """prompt + completion (+ eos) -> ids with labels masked (-100) on the prompt."""
    out = []
    for r in rows:
        p = tokenizer(r["prompt"], add_special_tokens=True)["input_ids"]
        c = tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p + c)[:max_length]
        labels = ([-100] * len(p) + c)[:max_length]
        out.append({"input_ids": ids, "labels": labels})
    return out


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels [b, s]."""
    n = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, x in enumerate(items):
        k = len(x["input_ids"])
        ids[i, :k] = torch.tensor(x["input_ids"])
        labels[i, :k] = torch.tensor(x["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack(items: list[dict], pad_id: int, row_length: int | None = None) -> dict[str, torch.Tensor]:
    """The sequences of a batch packed end to end into as few rows as the longest one allows
    (first-fit decreasing): input_ids, labels and position_ids [rows, longest], positions restarting
    at 0 for each sequence and no attention mask, so that the model's packed-sequence mask (built
    from the position restarts) keeps each sequence attending to itself only. Each sequence's first
    label is masked, so no position predicts the next sequence's first token: the same positions and
    targets as :func:`collate`, in fewer rows. A row's unused tail is padding with positions of its
    own and no targets. Rows stay as long as the longest sequence, so attention costs what it costs
    padded (one long row would make it quadratic in the whole batch). ``row_length`` overrides the
    row length (at least the longest sequence)."""
    cap = max(max(len(x["input_ids"]) for x in items), row_length or 0)
    rows: list[list[dict]] = []
    used: list[int] = []
    for x in sorted(items, key=lambda x: -len(x["input_ids"])):
        n = len(x["input_ids"])
        r = next((i for i, u in enumerate(used) if u + n <= cap), None)
        if r is None:
            rows.append([])
            used.append(0)
            r = len(rows) - 1
        rows[r].append(x)
        used[r] += n
    ids = torch.full((len(rows), cap), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), cap), -100, dtype=torch.long)
    pos = torch.zeros((len(rows), cap), dtype=torch.long)
    for r, row in enumerate(rows):
        k = 0
        for x in row:
            n = len(x["input_ids"])
            ids[r, k:k + n] = torch.tensor(x["input_ids"])
            labels[r, k + 1:k + n] = torch.tensor(x["labels"][1:], dtype=torch.long)
            pos[r, k:k + n] = torch.arange(n)
            k += n
        pos[r, k:] = torch.arange(cap - k)
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


@torch.no_grad()
def packing_works(model: nn.Module, items: list[dict], pad_id: int, rtol: float = 1e-4) -> bool:
    """Whether this model keeps packed sequences apart: the loss of `items` packed all into one row
    equals their padded loss. A model that ignores position restarts when it builds its attention
    mask would let sequences attend to each other and fail here."""
    if len(items) < 2:
        return True
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        padded = completion_loss(model, {k: v.to(dev) for k, v in collate(items, pad_id).items()}).item()
        one_row = pack(items, pad_id, row_length=sum(len(x["input_ids"]) for x in items))
        packed = completion_loss(model, {k: v.to(dev) for k, v in one_row.items()}).item()
    except (TypeError, ValueError, RuntimeError):
        return False
    finally:
        model.train(was)
    return math.isclose(padded, packed, rel_tol=rtol)


def make_batch(items: list[dict], pad_id: int, packing: bool, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one batch (packed or padded), on ``device`` when given (the model's)."""
    b = pack(items, pad_id) if packing else collate(items, pad_id)
    return b if device is None else {k: v.to(device) for k, v in b.items()}


def _inputs(batch: dict) -> dict:
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _decoder_and_head(model: nn.Module):
    """(decoder, output head, logit soft-cap or None) of a causal LM, PEFT-wrapped or not; None when
    the model does not expose them (then the loss goes through the model's own forward)."""
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    get_dec, get_head = getattr(inner, "get_decoder", None), getattr(inner, "get_output_embeddings", None)
    if not (callable(get_dec) and callable(get_head)):
        return None
    dec, head = get_dec(), get_head()
    if not isinstance(dec, nn.Module) or not isinstance(head, nn.Module) or dec is inner:
        return None
    cap = getattr(getattr(inner, "config", None), "final_logit_softcapping", None)
    return dec, head, (float(cap) if cap else None)


def completion_loss(model: nn.Module, batch: dict, reduction: str = "mean", whole: bool = False) -> torch.Tensor:
    """Cross-entropy of next-token predictions on completion tokens, in float32.

    Only the positions that predict a completion token go through the output head: the same loss as
    on the full [b, s, V] logits, without computing or storing the logits of prompt and padding
    positions (the largest tensor of a step, vocabulary × positions). `whole`: through the model's
    own forward (a DDP or FSDP wrapper must see the forward pass to exchange gradients).
    """
    target = batch["labels"][:, 1:]
    parts = None if whole else _decoder_and_head(model)
    if parts is None:
        logits = model(**_inputs(batch), use_cache=False).logits
        logits = logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100,
                               reduction=reduction)
    dec, head, cap = parts
    hidden = dec(**_inputs(batch), use_cache=False)[0]
    keep = target != -100  # [b, s-1]
    logits = head(hidden[:, :-1][keep]).float()  # [n, V]
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, target[keep], reduction=reduction)
