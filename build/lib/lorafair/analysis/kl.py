"""Token-posterior KL divergence, its summaries, "shift captured", and target log-likelihood.

All numerics run in float32 from logits through ``log_softmax``. Functions that look at the
vocabulary axis work in chunks of positions, so the extra memory they need is
``chunk_size × vocab`` floats whatever the batch size.

Definitions (DESIGN.md, "Measures"):

- ``KL(p || q) = Σ_v p(v) (log p(v) − log q(v))`` per token position.
- shift captured by an arm = ``1 − mean KL(full || arm) / mean KL(full || base)``; 1 means the arm
  reproduces full fine-tuning, 0 means it is no closer to full fine-tuning than the base model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

DEFAULT_CHUNK = 256


def _rows(x: Tensor) -> Tensor:
    """[..., V] -> [N, V] view (or copy when not contiguous)."""
    return x.reshape(-1, x.shape[-1])


def kl_pair(logits_a: Tensor, logits_b: Tensor, chunk_size: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Both directions at once: ``(KL(a||b), KL(b||a))``, each of shape ``logits_a.shape[:-1]``.

    logits_a, logits_b: [..., V] (any dtype; upcast to float32 chunk by chunk).
    One ``log_softmax`` per side and chunk serves both directions.
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    lead = logits_a.shape[:-1]
    a, b = _rows(logits_a), _rows(logits_b)
    ab = torch.empty(a.shape[0], dtype=torch.float32, device=a.device)
    ba = torch.empty_like(ab)
    step = max(1, int(chunk_size))
    with torch.no_grad():
        for i in range(0, a.shape[0], step):
            la = torch.log_softmax(a[i : i + step].float(), dim=-1)
            lb = torch.log_softmax(b[i : i + step].float(), dim=-1)
            diff = la - lb
            ab[i : i + step] = (la.exp() * diff).sum(-1)
            ba[i : i + step] = -(lb.exp() * diff).sum(-1)
    return ab.reshape(lead), ba.reshape(lead)


def log_probs(logits: Tensor, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """float32 log-softmax over the last axis, computed chunk by chunk: [..., V] -> [..., V].

    Reference arms are converted once per batch and then compared with every other arm.
    """
    flat = _rows(logits)
    out = torch.empty(flat.shape, dtype=torch.float32, device=flat.device)
    step = max(1, int(chunk_size))
    with torch.no_grad():
        for i in range(0, flat.shape[0], step):
            out[i : i + step] = torch.log_softmax(flat[i : i + step].float(), dim=-1)
    return out.reshape(logits.shape)


def kl_against(
    logits: Tensor, ref_logprobs: list[Tensor], chunk_size: int = DEFAULT_CHUNK
) -> list[tuple[Tensor, Tensor]]:
    """``[(KL(a||r), KL(r||a)) for r in ref_logprobs]``, each of shape ``logits.shape[:-1]``.

    logits: [..., V] of arm a; ref_logprobs: float32 log-probabilities [..., V] (see ``log_probs``).
    The arm's log-softmax is computed once per chunk and shared by all references.
    """
    lead = logits.shape[:-1]
    a = _rows(logits)
    refs = [_rows(r) for r in ref_logprobs]
    out = [(torch.empty(a.shape[0], dtype=torch.float32, device=a.device), torch.empty(a.shape[0], dtype=torch.float32, device=a.device)) for _ in refs]
    step = max(1, int(chunk_size))
    with torch.no_grad():
        for i in range(0, a.shape[0], step):
            la = torch.log_softmax(a[i : i + step].float(), dim=-1)
            pa = la.exp()
            for (ab, ba), r in zip(out, refs):
                lr = r[i : i + step]
                diff = la - lr
                ab[i : i + step] = torch.linalg.vecdot(pa, diff)
                ba[i : i + step] = -torch.linalg.vecdot(lr.exp(), diff)
    return [(ab.reshape(lead), ba.reshape(lead)) for ab, ba in out]


def token_kl(logits_p: Tensor, logits_q: Tensor, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """KL(p || q) per position.

    logits_p, logits_q: [b, s, V] (or any [..., V]); returns float32 [b, s].
    ``chunk_size`` positions are converted to log-probabilities at a time.
    """
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits_p.shape)} vs {tuple(logits_q.shape)}")
    lead = logits_p.shape[:-1]
    p, q = _rows(logits_p), _rows(logits_q)
    out = torch.empty(p.shape[0], dtype=torch.float32, device=p.device)
    step = max(1, int(chunk_size))
    with torch.no_grad():
        for i in range(0, p.shape[0], step):
            lp = torch.log_softmax(p[i : i + step].float(), dim=-1)
            lq = torch.log_softmax(q[i : i + step].float(), dim=-1)
            out[i : i + step] = (lp.exp() * (lp - lq)).sum(-1)
    return out.reshape(lead)


def summarize(values: np.ndarray) -> dict:
    """mean, median, 90th percentile and count of the finite values (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "median": float("nan"), "p90": float("nan"), "n": 0}
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p90": float(np.percentile(v, 90)),
        "n": int(v.size),
    }


def shift_captured(
    kl_full_arm_per_seq: np.ndarray,
    kl_full_base_per_seq: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Shift captured ``1 − mean(KL(full||arm)) / mean(KL(full||base))`` with a bootstrap interval.

    Both inputs: [n_sequences], per-sequence mean KL, aligned (entry i is the same sequence).
    Sequences where either value is not finite are dropped. The interval is the percentile
    bootstrap over sequences; numerator and denominator use the same resample indices.
    Returns ``{"value", "lo", "hi", "n"}`` (NaN when the denominator is zero or nothing is left).
    """
    arm = np.asarray(kl_full_arm_per_seq, dtype=np.float64).ravel()
    base = np.asarray(kl_full_base_per_seq, dtype=np.float64).ravel()
    if arm.shape != base.shape:
        raise ValueError(f"per-sequence arrays differ in length: {arm.size} vs {base.size}")
    keep = np.isfinite(arm) & np.isfinite(base)
    arm, base = arm[keep], base[keep]
    n = arm.size
    nan = float("nan")
    if n == 0 or base.mean() == 0:
        return {"value": nan, "lo": nan, "hi": nan, "n": int(n)}
    value = 1.0 - arm.mean() / base.mean()
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    block = max(1, (1 << 22) // max(n, 1))  # bound the index matrix to ~4M entries
    for start in range(0, n_boot, block):
        k = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        den = base[idx].mean(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            stats[start : start + k] = 1.0 - arm[idx].mean(1) / den
    stats = stats[np.isfinite(stats)]
    alpha = (1.0 - level) / 2.0
    lo, hi = (np.quantile(stats, [alpha, 1.0 - alpha]) if stats.size else (nan, nan))
    return {"value": float(value), "lo": float(lo), "hi": float(hi), "n": int(n)}


def next_token_mask(attention_mask: Tensor) -> Tensor:
    """Positions that predict a real next token: [b, s] bool, last column always False.

    Position t counts when token t and token t+1 are both real (attention_mask == 1); this works
    for left and right padding alike.
    """
    am = attention_mask.bool()
    out = torch.zeros_like(am)
    out[:, :-1] = am[:, :-1] & am[:, 1:]
    return out


def token_logprobs(logits: Tensor, input_ids: Tensor, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """log p(ids[t+1] | ids[:t+1]) for every position: [b, s-1] float32.

    logits: [b, s, V]; input_ids: [b, s]. Computed as ``logit[target] − logsumexp(logits)`` chunk by
    chunk, never materialising a full log-softmax.
    """
    b, s, v = logits.shape
    pred = logits[:, :-1].reshape(-1, v)
    tgt = input_ids[:, 1:].reshape(-1)
    out = torch.empty(pred.shape[0], dtype=torch.float32, device=logits.device)
    step = max(1, int(chunk_size))
    with torch.no_grad():
        for i in range(0, pred.shape[0], step):
            chunk = pred[i : i + step].float()
            out[i : i + step] = chunk.gather(1, tgt[i : i + step, None]).squeeze(1) - torch.logsumexp(chunk, -1)
    return out.reshape(b, s - 1)


def target_logprob(
    logits: Tensor, input_ids: Tensor, loss_mask: Tensor, chunk_size: int = DEFAULT_CHUNK
) -> Tensor:
    """Per-sequence mean log-likelihood of the target tokens: [b] float32 (NaN: no target).

    logits: [b, s, V]; input_ids, loss_mask: [b, s], ``loss_mask[i, t] == 1`` marks token t as a
    target. Next-token shift: ``logits[:, t]`` predicts ``input_ids[:, t+1]``, so the first token is
    never a target.
    """
    lp = token_logprobs(logits, input_ids, chunk_size)
    m = loss_mask[:, 1:].to(torch.float32)
    count = m.sum(1)
    total = (lp * m).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
