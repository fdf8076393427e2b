"""Batched sampling where every (prompt, sample) pair has its own fixed random stream.

Arms must differ only by their weights, so sampling must not depend on batch composition or on the
global RNG. Each (prompt, sample) pair gets a vector of uniforms drawn from its own seeded generator;
at step t the next token is the inverse-CDF pick of u[t] from the temperature- and top-p-adjusted
distribution. Decoding runs on the model's own KV cache: each prompt is prefilled once and its cache
repeated for its k samples (k times less prompt compute than expanding the prompts first), and
prompts are batched by length. `generate_adapters` decodes several LoRA adapters of one PEFT model
in shared batches, each row under its own adapter. `FixedStreamSampler` offers the same pick as a
logits processor for transformers' `generate`, for users who drive generation themselves.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def stream_seed(seed: int, prompt_id: str, sample: int) -> int:
    h = hashlib.sha256(f"{seed}|{prompt_id}|{sample}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def uniforms(seed: int, keys: list[tuple[str, int]], n: int) -> torch.Tensor:
    """[rows, n] uniforms in [0, 1), one independent stream per (prompt_id, sample)."""
    out = torch.empty(len(keys), n)
    for i, (pid, s) in enumerate(keys):
        g = torch.Generator().manual_seed(stream_seed(seed, pid, s))
        out[i] = torch.rand(n, generator=g)
    return out


TOPK_CANDIDATES = 1024  # nucleus candidates taken with a partial sort before falling back to a full one


def pick(scores: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Inverse-CDF sampling. scores: [b, V] logits, u: [b] uniforms -> token ids [b].

    The tokens are ordered by probability, the smallest prefix holding `top_p` of the mass is kept,
    and u picks along its cumulative sum. On CPU with top_p < 1, rows whose nucleus lies inside the
    top TOPK_CANDIDATES tokens (and has no tied probabilities, whose order a partial sort may
    permute) are done on that partial sort: the prefix sums are the same numbers, so the pick is
    the same token; the other rows take the full sort.
    """
    probs = torch.softmax(scores.float() / temperature, dim=-1)
    k = min(TOPK_CANDIDATES, probs.shape[-1])
    if probs.device.type != "cpu" or top_p >= 1.0 or k == probs.shape[-1]:
        return _pick_sorted(*probs.sort(dim=-1, descending=True), u, top_p)
    top, idx = probs.topk(k, dim=-1, sorted=True)
    keep = (top.cumsum(-1) - top) < top_p
    tied = ((top[:, 1:] == top[:, :-1]) & keep[:, :-1]).any(-1)
    ok = ~keep[:, -1] & ~tied
    if bool(ok.all()):
        return _pick_sorted(top, idx, u, top_p)
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    out[ok] = _pick_sorted(top[ok], idx[ok], u[ok], top_p)
    rest = ~ok
    out[rest] = _pick_sorted(*probs[rest].sort(dim=-1, descending=True), u[rest], top_p)
    return out


def _pick_sorted(sorted_p: torch.Tensor, idx: torch.Tensor, u: torch.Tensor, top_p: float) -> torch.Tensor:
    """The pick on probabilities sorted in descending order (all of them, or a prefix holding the
    nucleus): sorted_p, idx [b, k], u [b] -> token ids [b]."""
    csum = sorted_p.cumsum(-1)
    keep = (csum - sorted_p) < top_p  # smallest prefix whose mass reaches top_p (first always kept)
    sorted_p = sorted_p * keep
    csum = sorted_p.cumsum(-1)
    target = (u.to(csum) * csum[:, -1]).unsqueeze(-1)
    j = torch.searchsorted(csum, target).clamp(max=csum.size(-1) - 1)
    return idx.gather(-1, j).squeeze(-1)


class FixedStreamSampler:
    """A logits processor that samples with pre-drawn uniforms and leaves one finite logit."""

    def __init__(self, u: torch.Tensor, prompt_len: int, temperature: float, top_p: float):
        self.u, self.prompt_len, self.temperature, self.top_p = u, prompt_len, temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t = input_ids.shape[1] - self.prompt_len
        tok = pick(scores, self.u[:, t], self.temperature, self.top_p)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, tok.unsqueeze(1), 0.0)
        return out


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: list[dict],
    samples: int,
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    batch_size: int = 32,
) -> list[dict]:
    """prompts: dicts with `id` and `prompt`. Returns one row per (prompt, sample), in prompt order
    then sample order: prompt_id, sample, continuation. Greedy decoding gives one sample per prompt.

    Each prompt is run through the model once (prefill) and its key/value cache is repeated for its
    k samples; prompts are batched by token length so that little compute goes to padding.
    `batch_size` counts sequences (prompts x samples) decoded together.
    """
    return _generate(model, tokenizer, prompts, samples, max_new_tokens, [None], seed=seed, temperature=temperature,
                     top_p=top_p, greedy=greedy, batch_size=batch_size)[None]


@torch.no_grad()
def generate_adapters(model: nn.Module, tokenizer, prompts: list[dict], adapters: list[str], samples: int,
                      max_new_tokens: int, **options) -> dict[str, list[dict]]:
    """`generate` for several LoRA adapters of one PEFT model at once ("__base__": adapters off);
    `options` are those of `generate`.

    Rows of every adapter share each forward pass (PEFT's per-row `adapter_names`), so a sweep of
    arms with few prompts each still fills the batch; `batch_size` counts rows of all adapters
    together. Each (prompt, sample) uses the same stream under every adapter, as with `generate`
    called once per adapter, and gives the same continuation up to float rounding of the batch.
    Returns {adapter: rows as `generate` returns them}.
    """
    if not adapters or len(set(adapters)) != len(adapters):
        raise ValueError(f"adapters must be distinct and non-empty, got {adapters}")
    return _generate(model, tokenizer, prompts, samples, max_new_tokens, list(adapters), **options)


def _generate(model, tokenizer, prompts, samples, max_new_tokens, adapters: list, seed=0, temperature=1.0,
              top_p=1.0, greedy=False, batch_size=32) -> dict:
    samples = 1 if greedy else samples
    per_batch = max(1, batch_size // (samples * len(adapters)))
    lengths = [len(tokenizer(p["prompt"])["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    dev = next(model.parameters()).device
    texts: dict = {a: {} for a in adapters}
    try:
        for j in range(0, len(order), per_batch):
            idx = order[j:j + per_batch]
            chunk = [prompts[i] for i in idx]
            enc = tokenizer([p["prompt"] for p in chunk], return_tensors="pt", padding=True).to(dev)
            ids, attn = enc["input_ids"].repeat(len(adapters), 1), enc["attention_mask"].repeat(len(adapters), 1)
            u = None
            if not greedy:
                u = uniforms(seed, [(str(p["id"]), s) for p in chunk for s in range(samples)], max_new_tokens)
                u = u.repeat(len(adapters), 1).to(dev)
            names = None if adapters == [None] else [a for a in adapters for _ in chunk]
            new = _decode(model, ids, attn, samples, max_new_tokens, u, temperature, top_p,
                          tokenizer.eos_token_id, tokenizer.pad_token_id, names)
            decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
            rows_per_adapter = len(chunk) * samples
            for k, a in enumerate(adapters):
                part = decoded[k * rows_per_adapter:(k + 1) * rows_per_adapter]
                for n, i in enumerate(idx):
                    texts[a][i] = part[n * samples:(n + 1) * samples]
    finally:
        tokenizer.padding_side = old_side
    return {a: [{"prompt_id": p["id"], "sample": s, "continuation": texts[a][i][s]}
                for i, p in enumerate(prompts) for s in range(samples)] for a in adapters}


def _decode(model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, samples: int, max_new_tokens: int,
            u: torch.Tensor | None, temperature: float, top_p: float, eos_id: int, pad_id: int,
            adapter_names: list[str] | None = None) -> torch.Tensor:
    """Prefill left-padded prompts ids/attn [b, s] once, repeat each row's cache `samples` times, then
    decode with the KV cache. u: [b * samples, max_new_tokens] uniforms, or None for greedy;
    adapter_names: one PEFT adapter per prompt row, or None. Only the last position goes through
    the output head at prefill. Returns the new tokens [b * samples, <= max_new_tokens] (pad after an
    end-of-sequence)."""
    extra = {} if adapter_names is None else {"adapter_names": adapter_names}
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1, **extra)
    cache, logits = out.cache, out.logits[:, -1].float()
    if samples > 1:
        cache.batch_repeat_interleave(samples)
        attn = attn.repeat_interleave(samples, 0)
        logits = logits.repeat_interleave(samples, 0)
        if adapter_names is not None:
            extra = {"adapter_names": [a for a in adapter_names for _ in range(samples)]}
    nxt_pos = attn.sum(-1, keepdim=True)
    done = torch.zeros(attn.shape[0], dtype=torch.bool, device=attn.device)
    new = []
    for t in range(max_new_tokens):
        tok = logits.argmax(-1) if u is None else pick(logits, u[:, t], temperature, top_p)
        tok = tok.masked_fill(done, pad_id)
        new.append(tok)
        done |= tok == eos_id
        if bool(done.all()) or t + 1 == max_new_tokens:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=nxt_pos, cache=cache,
                    use_cache=True, **extra)
        cache, logits = out.cache, out.logits[:, -1].float()
        nxt_pos = nxt_pos + 1
    return torch.stack(new, dim=1)
