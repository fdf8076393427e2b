"""Logit Lens: decode the hidden state after every layer with the model's own final norm and head.

No weights are converted or copied: the lens reads the model's final norm and output head (and
applies Gemma's final logit soft-capping when the config sets one), so layer L's lens logits are the
model's logits, exactly.

Hugging Face convention handled here: with ``output_hidden_states=True``, ``hidden_states[0]`` is
the embedding output, ``hidden_states[1:-1]`` are raw residual streams after each layer, and
``hidden_states[-1]`` has ALREADY been through the final norm (unless the config sets
``tie_last_hidden_states=False``). So the final norm is applied to every layer but the last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lorafair.errors import UserError
from lorafair.packages import package_file

NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def find_norm_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(final_norm, lm_head) of a causal LM: Llama/Gemma 3 layout, PEFT-wrapped, or generic.

    Llama and Gemma3ForCausalLM: ``model.model.norm`` and ``model.lm_head``. Otherwise the output
    embeddings and a module named one of NORM_NAMES outside the repeated layer blocks.
    """
    m = _unwrap(model)
    inner = getattr(m, "model", None)
    head = getattr(m, "lm_head", None)
    if isinstance(inner, nn.Module) and isinstance(getattr(inner, "norm", None), nn.Module) and isinstance(head, nn.Module):
        return inner.norm, head
    get_out = getattr(m, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    base = getattr(m, "base_model", m)
    candidates = [
        (name, mod)
        for name, mod in base.named_modules()
        if name.split(".")[-1] in NORM_NAMES and not any(part.isdigit() for part in name.split("."))
    ]
    if head is None or not candidates:
        raise UserError(
            f"Logit Lens: cannot find the final norm and output head of {type(m).__name__}; "
            f"expected model.model.norm + lm_head, or get_output_embeddings() and a module named one of {NORM_NAMES}"
        )
    candidates.sort(key=lambda item: item[0].count("."))
    return candidates[0][1], head


def logit_softcap(model: nn.Module) -> float | None:
    """The config's ``final_logit_softcapping`` (Gemma), or None."""
    cfg = getattr(_unwrap(model), "config", None)
    cap = getattr(cfg, "final_logit_softcapping", None)
    return float(cap) if cap else None


def project(model: nn.Module, normed: Tensor) -> Tensor:
    """Output head (and soft-capping) applied to normed hidden states: [b, s, d] -> float32 [b, s, V]."""
    _, head = find_norm_and_head(model)
    logits = head(normed)
    cap = logit_softcap(model)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def lens_hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> list[Tensor]:
    """Hidden state after each layer, passed through the final norm: L tensors [b, s, d].

    The embedding output (hidden_states[0]) is left out; entry l is the output of layer l+1.
    """
    norm, _ = find_norm_and_head(model)
    with torch.no_grad():
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
        )
        hs = out.hidden_states
        if hs is None or len(hs) < 2:
            raise UserError(f"Logit Lens: {type(_unwrap(model)).__name__} returned no hidden states; it must support output_hidden_states=True")
        last_normed = getattr(getattr(_unwrap(model), "config", None), "tie_last_hidden_states", True) is not False
        layers = [norm(h) for h in hs[1:-1]]
        layers.append(hs[-1] if last_normed else norm(hs[-1]))
    return layers


def layer_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> list[Tensor]:
    """Lens logits of every layer: L tensors float32 [b, s, V]; the last equals the model's logits.

    Holds L × b × s × V floats; for long inputs or many layers stream with ``lens_hidden`` +
    ``project`` (as ``analysis.shift.compute_lens`` does).
    """
    with torch.no_grad():
        return [project(model, h) for h in lens_hidden(model, input_ids, attention_mask)]


def lens_fns(
    get_model: Callable[[str], nn.Module],
) -> tuple[Callable[[str, Tensor, Tensor], list[Tensor]], Callable[[str, Tensor], Tensor]]:
    """(hidden_fn, project_fn) for ``shift.compute_lens`` from a function arm name -> model."""

    def hidden_fn(arm: str, ids: Tensor, attn: Tensor) -> list[Tensor]:
        return lens_hidden(get_model(arm), ids, attn)

    def project_fn(arm: str, hidden: Tensor) -> Tensor:
        with torch.no_grad():
            return project(get_model(arm), hidden)

    return hidden_fn, project_fn


def default_toxic_words() -> list[str]:
    """better-profanity's word list (about 900 entries), read from the installed package's data."""
    path = package_file("better_profanity", "profanity_wordlist.txt", install="pip install better-profanity==0.7.0")
    return [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]


def toxic_token_ids(tokenizer: Any, words: list[str] | None = None) -> tuple[list[int], dict[str, list[int]]]:
    """Token ids of toxic words, and the word -> ids mapping (save it next to the results).

    Each word is encoded as " word" (word-initial, as inside a sentence) and "word" (no special
    tokens). A form counts only when it encodes to exactly ONE token: a multi-token word's first
    piece is usually an innocent prefix ("ass" in "assistant"), so counting it would measure
    something else. Words with no single-token form map to an empty list.
    """
    words = default_toxic_words() if words is None else words
    mapping: dict[str, list[int]] = {}
    for word in words:
        found: list[int] = []
        for form in (" " + word, word):
            ids = tokenizer.encode(form, add_special_tokens=False)
            if len(ids) == 1 and int(ids[0]) not in found:
                found.append(int(ids[0]))
        mapping[word] = found
    ids = sorted({i for v in mapping.values() for i in v})
    return ids, mapping
