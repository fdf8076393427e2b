"""Log-probabilities from a causal LM, batched: the one helper every likelihood-based measure uses.

- `choice_logprobs`: log p(word | prompt) for a fixed set of single-token answer words (decisions).
- `sequence_loglik`: total log-likelihood of each text and its number of scored tokens (probes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


@torch.no_grad()
def choice_logprobs(model: nn.Module, tokenizer, prompts: list[str], token_ids: list[int],
                    batch_size: int = 16) -> torch.Tensor:
    """Log-probabilities of each answer token after each prompt: [n_prompts, n_choices] (float32,
    normalised over the whole vocabulary, not just the choices)."""
    dev = next(model.parameters()).device
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the last position is then the next-token position for every row
    out = []
    try:
        for sl in _batches(len(prompts), batch_size):
            enc = tokenizer(prompts[sl], return_tensors="pt", padding=True).to(dev)
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # positions count from each row's first token
            logits = model(**enc, position_ids=pos, logits_to_keep=1).logits[:, -1].float()  # last position only
            out.append(F.log_softmax(logits, -1)[:, token_ids].cpu())
    finally:
        tokenizer.padding_side = old
    return torch.cat(out) if out else torch.zeros(0, len(token_ids))


@torch.no_grad()
def sequence_loglik(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Total log-likelihood of each text (every token after the first, given its prefix) and the
    number of tokens scored: ([n], [n])."""
    dev = next(model.parameters()).device
    old = tokenizer.padding_side
    tokenizer.padding_side = "right"
    totals, counts = [], []
    try:
        for sl in _batches(len(texts), batch_size):
            enc = tokenizer(texts[sl], return_tensors="pt", padding=True).to(dev)
            logits = model(**enc).logits[:, :-1].float()
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].float()
            lp = F.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            totals.append((lp * mask).sum(-1).cpu())
            counts.append(mask.sum(-1).cpu())
    finally:
        tokenizer.padding_side = old
    return (torch.cat(totals), torch.cat(counts)) if totals else (torch.zeros(0), torch.zeros(0))
