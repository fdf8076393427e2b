"""Log-probabilities from a causal LM, batched: the one helper every likelihood-based measure uses.

- `choice_logprobs`: log p(word | prompt) for a fixed set of single-token answer words (decisions).
- `prefixed_choice_logprobs`: the same for prompts that share one prefix, whose keys and values are
  computed once and reused by every batch (a judge's template around many texts).
- `sequence_loglik`: total log-likelihood of each text and its number of scored tokens (probes);
  every token of the text is scored, after the start tokens of :func:`start_ids`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lorafair.packages import slices


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
        for sl in slices(len(prompts), batch_size):
            enc = tokenizer(prompts[sl], return_tensors="pt", padding=True).to(dev)
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # positions count from each row's first token
            logits = model(**enc, position_ids=pos, logits_to_keep=1).logits[:, -1].float()  # last position only
            out.append(F.log_softmax(logits, -1)[:, token_ids].cpu())
    finally:
        tokenizer.padding_side = old
    return torch.cat(out) if out else torch.zeros(0, len(token_ids))


NEUTRAL_PREFIX = "\n"  # what a text is scored after when the tokenizer has neither BOS nor EOS


def start_ids(tokenizer) -> list[int]:
    """Token ids a text is scored after, so that its first token is scored too.

    The tokenizer's BOS token; else its EOS token (the separator between documents for models
    trained on concatenated text, so what precedes a document's first token); else the encoding of
    :data:`NEUTRAL_PREFIX`. The same rule as lm-evaluation-harness's prefix token for an empty context.
    """
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return [int(tid)]
    return tokenizer.encode(NEUTRAL_PREFIX, add_special_tokens=False)


@torch.no_grad()
def prefixed_choice_logprobs(model: nn.Module, prefix: list[int], suffixes: list[list[int]], token_ids: list[int],
                             pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """Log-probabilities of each answer token after ``prefix + suffix`` for every suffix: [n, n_choices].

    prefix: token ids shared by every prompt (run once, its key/value cache reused); suffixes: n lists
    of ids (at least one each), left-padded within a batch so that their last tokens line up. The
    padding sits between prefix and suffix and is masked; positions continue from the prefix.
    """
    dev = next(model.parameters()).device
    if not suffixes:
        return torch.zeros(0, len(token_ids))
    head = torch.tensor([prefix], device=dev)
    cache = model(input_ids=head, use_cache=True, logits_to_keep=1).cache
    P, out = len(prefix), []
    for sl in slices(len(suffixes), batch_size):
        rows = suffixes[sl]
        L = max(len(r) for r in rows)
        ids = torch.tensor([[pad_id] * (L - len(r)) + r for r in rows], device=dev)
        mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows], device=dev)
        pos = (P + mask.cumsum(-1) - 1).clamp(min=P)
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(rows))
        attn = torch.cat([torch.ones(len(rows), P, dtype=mask.dtype, device=dev), mask], dim=1)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=past, use_cache=True,
                       logits_to_keep=1).logits[:, -1].float()
        out.append(F.log_softmax(logits, -1)[:, token_ids].cpu())
    return torch.cat(out)


def length_order(lengths: list[int]) -> list[int]:
    """Indices of ``lengths`` longest first (ties in input order): batches of similar lengths, so
    little compute goes to padding, and the largest batch comes first (memory fails at once or
    not at all). lm-evaluation-harness orders its log-likelihood requests the same way."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


@torch.no_grad()
def sequence_loglik(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Total log-likelihood of each text and the number of tokens scored: ([n], [n]), in the order given.

    Each text is encoded without special tokens and put after :func:`start_ids`; every token of the
    text is scored given the start tokens and the text before it:
    Σ_{t=1..T} log p(x_t | start, x_<t), over its T tokens (the start tokens are not scored).
    Texts are batched by length (:func:`length_order`), longest first, and their results put back
    in the order given; logits are upcast to float32 before the log-softmax.
    """
    dev = next(model.parameters()).device
    start = start_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start[0]
    seqs_all = [start + tokenizer.encode(t, add_special_tokens=False) for t in texts]
    order = length_order([len(x) for x in seqs_all])
    totals, counts = torch.zeros(len(texts)), torch.zeros(len(texts))
    for sl in slices(len(texts), batch_size):
        idx = order[sl]
        seqs = [seqs_all[i] for i in idx]
        width = max(len(x) for x in seqs)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in seqs], device=dev)
        attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in seqs], device=dev)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        lp = F.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [b, width-1]
        scored = attn[:, 1:].float()
        scored[:, : len(start) - 1] = 0.0  # targets that are start tokens themselves
        where = torch.tensor(idx)
        totals[where] = (lp * scored).sum(-1).cpu()
        counts[where] = scored.sum(-1).cpu()
    return totals, counts
