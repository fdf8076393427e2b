"""The float type a model runs in: ``model.precision`` (auto | float32 | bfloat16) resolved for a device.

``auto`` is bfloat16 where the device multiplies bf16 matrices in hardware (a CUDA GPU that
supports bf16; a CPU with AMX or AVX512-BF16), else float32. One rule, used by every place a model
runs:

- inference (generation, LM scoring, KL, Logit Lens, judge): the model's weights are cast to the
  dtype once (:func:`for_inference`); logits are upcast to float32 before every log-softmax.
- training (:func:`for_training`): trained parameters stay float32 (the optimizer's master weights
  and state); frozen parameters (a LoRA arm's base) are stored in the dtype; the forward and
  backward run under autocast (:func:`compute`); the loss is computed in float32.

float32 changes nothing: no cast, autocast disabled, the same numbers as without this module.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

CHOICES = ("auto", "float32", "bfloat16")
CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bf16 matrix instructions

_session = "auto"  # the precision of the run in this process (set_session), for models built without a study


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is no such file)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16), by torch's own probe
    where it has one, else by the /proc/cpuinfo flags."""
    probes = [getattr(torch.cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    probes = [p for p in probes if callable(p)]
    if probes:
        try:
            return any(bool(p()) for p in probes)
        except RuntimeError:
            pass
    return bool(cpu_flags() & set(CPU_FLAGS))


def bf16_supported(device: torch.device | str | None = None) -> bool:
    """Whether ``device`` (default: cuda when available, else cpu) computes bf16 matrices in hardware."""
    dev = torch.device(device) if device is not None else _default_device()
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return cpu_bf16()
    return False


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve(precision: str = "auto", device: torch.device | str | None = None) -> torch.dtype:
    """The dtype for ``precision`` on ``device``: float32 / bfloat16 as named; auto by :func:`bf16_supported`."""
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, got {precision!r}")
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_supported(device) else torch.float32


def name(dtype: torch.dtype | None) -> str:
    """'float32' or 'bfloat16' (None counts as float32)."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def set_session(precision: str) -> None:
    """The precision of the run in this process: what :func:`session` resolves (a judge scorer's
    model follows the study's precision through it)."""
    global _session
    resolve(precision)  # refuses unknown names
    _session = precision


def session() -> str:
    return _session


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype most of the model's floating-point parameters have (its frozen base, under LoRA)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def for_inference(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """The model with its floating-point parameters in ``dtype`` (in place; nothing happens for
    float32 or None). Buffers are left alone: rotary frequencies stay float32, as the model
    computes its position angles in float32."""
    if dtype is None or dtype == torch.float32:
        return model
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model


def for_training(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """Frozen parameters in ``dtype`` (buffers left alone), trained parameters kept
    float32 (in place). A full fine-tuning arm trains everything, so nothing is cast and its
    compute runs under autocast with float32 master weights."""
    if dtype is None or dtype == torch.float32:
        return model
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model


def compute(dtype: torch.dtype | None, device: torch.device | str | None = None):
    """A context in which matrix products run in ``dtype`` (autocast); float32: autocast off."""
    dev = torch.device(device) if device is not None else _default_device()
    if dtype is None or dtype == torch.float32:
        return torch.autocast(dev.type, enabled=False) if dev.type in ("cpu", "cuda") else contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)
