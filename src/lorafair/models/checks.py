"""Checks of a model folder before anything runs, and of weights as they load.

- :func:`check_weight_files`: a local folder holds safetensors weights (pickled ``.bin`` weights are
  refused, never unpickled), every tensor the config's architecture expects is present, and each has
  the shape the config implies. The expected tensors come from building the model on the meta device
  (no memory, no weights read); the stored ones from the safetensors headers.
- :func:`check_finite`: no parameter of a loaded model holds NaN or infinity.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lorafair.errors import UserError


def stored_shapes(weights: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from safetensors headers only."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, tuple[int, ...]] = {}
    for w in weights:
        try:
            with safe_open(str(w), framework="pt") as f:
                for k in f.keys():
                    out[k] = tuple(f.get_slice(k).get_shape())
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"model.source: {w} is not a readable safetensors file ({str(e).splitlines()[0]}); "
                            "replace it with the file save_pretrained wrote") from None
    return out


def expected_shapes(config, trust_remote_code: bool = False) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """What the config's architecture holds: parameter name -> shape, and the names of tensors that
    may be absent from a checkpoint (tied to another, or rebuilt at load)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    patterns = [*(getattr(model, "_keys_to_ignore_on_load_missing", None) or []), r"rotary_emb\.inv_freq$"]
    if getattr(config, "tie_word_embeddings", False):
        patterns.append(r"^lm_head\.")
    return shapes, {k for k in shapes if any(re.search(p, k) for p in patterns)}


def check_weight_files(folder: Path, config, trust_remote_code: bool = False) -> None:
    """One line naming the first problem of a local model folder's weights (see module docstring)."""
    safetensors = sorted(folder.glob("*.safetensors"))
    pickled = sorted(p for suffix in ("*.bin", "*.pt", "*.pth") for p in folder.glob(suffix))
    if not safetensors and pickled:
        raise UserError(f"model.source: {folder} holds pickled weights ({pickled[0].name}), which lorafair never "
                        "loads (unpickling runs code); save the model with save_pretrained(..., "
                        "safe_serialization=True) and give that folder")
    if not safetensors:
        raise UserError(f"model.source: {folder} holds no weights (*.safetensors); give the folder that "
                        "save_pretrained wrote")
    stored = stored_shapes(safetensors)
    shapes, optional = expected_shapes(config, trust_remote_code)
    prefixes = ("", "model.")  # some checkpoints store the base model's tensors without its prefix
    for name, shape in shapes.items():
        found = next((stored[p + name] for p in prefixes if p + name in stored), None)
        if found is None:
            found = stored.get(name.removeprefix("model."))
        if found is None:
            if name in optional:
                continue
            raise UserError(f"model.source: {folder} lacks the tensor {name!r} that its config.json's architecture "
                            "needs; give the complete folder save_pretrained wrote")
        if tuple(found) != shape:
            raise UserError(f"model.source: {folder}: tensor {name!r} has shape {list(found)} but config.json implies "
                            f"{list(shape)}; the config does not belong to these weights, restore the matching "
                            "config.json")


def check_finite(model: torch.nn.Module, source: str) -> None:
    """No NaN or infinity in any parameter (one pass over each tensor, no copy kept)."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise UserError(f"model.source: {source}: the weights hold NaN or infinity (first in {name}); every arm "
                            "trained from them would diverge, so restore the model's weight files")
