"""What kind of arm an arm is, asked in one place: the reference arms (base, full), LoRA, and the
LoRA variants as records.

A variant is a `Variant` record registered with :func:`register_variant` (in the spirit of PEFT's
``register_peft_method``): its PEFT settings, how its learning-rate grid scales with the rank,
whether its rows can share a batch with base and other adapters, its label, and how its effective
ΔW is taken. Every module outside this package asks these functions instead of testing an arm's
``type`` or ``variant`` string. Works on anything with ``type`` (and ``variant``, ``rank``): a
study's `ArmSpec` or an expanded `Arm`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

BASE, FULL, LORA = "base", "full", "lora"
TYPES = (BASE, FULL, LORA)


@dataclass(frozen=True)
class Variant:
    name: str  # the study's ``variant:`` value
    prefix: str  # the arm name's prefix: <prefix>-r<rank>
    label: str  # how reports write it
    peft: dict = field(default_factory=dict)  # extra LoraConfig settings
    lr_divisor: Callable[[int], float] = lambda rank: 1.0  # the LoRA grid divided by this at a rank (training.lr_search)
    shares_batch: bool = True  # rows can share a forward pass with base and other adapters (PEFT adapter_names)
    # effective ΔW: "delta" = PEFT's get_delta_weight (B·A·scaling); "merge" = merged weight minus W
    # (variants whose merge is not additive, e.g. DoRA's magnitude); see analysis.weights.peft_deltas
    delta: str = "delta"
    shift_reference: bool = False  # its measured shift is set against full's spectrum in the weight analysis


VARIANTS: dict[str, Variant] = {}


def register_variant(v: Variant) -> Variant:
    """Add a LoRA variant; its name must be new."""
    if v.name in VARIANTS:
        raise ValueError(f"variant {v.name!r} is already registered")
    VARIANTS[v.name] = v
    return v


# plain LoRA: alpha = 2r scales the update by 2 at every rank, so one grid serves every rank
register_variant(Variant("plain", "lora", "LoRA", {}, shift_reference=True))
# rsLoRA scales by alpha / sqrt(r), sqrt(r) times plain LoRA's: its grid is divided by sqrt(r)
register_variant(Variant("rslora", "rslora", "rsLoRA", {"use_rslora": True},
                         lr_divisor=math.sqrt))
# DoRA: PEFT does not mix DoRA rows with others in a batch; its merge rescales by a magnitude vector
register_variant(Variant("dora", "dora", "DoRA", {"use_dora": True}, shares_batch=False, delta="merge"))


def variant(arm) -> Variant:
    """The record of a LoRA arm's variant."""
    return VARIANTS[arm.variant]


def is_base(arm) -> bool:
    return arm.type == BASE


def is_full(arm) -> bool:
    return arm.type == FULL


def is_lora(arm) -> bool:
    return arm.type == LORA


def is_reference(arm) -> bool:
    """Base or full: the arms every other arm is measured against."""
    return arm.type in (BASE, FULL)


def trains(arm) -> bool:
    """Whether the arm is trained (every arm but base)."""
    return arm.type != BASE


def weights_kind(arm) -> str:
    """How a trained arm's weights are stored (RunDir.weights_dir): "full" or "lora"."""
    return arm.type


def own_process(arm) -> bool:
    """Whether the arm is evaluated as a model of its own rather than through the shared base
    (full fine-tuning: a second copy of every weight)."""
    return arm.type == FULL


def variant_of(peft_config) -> Variant:
    """The variant a saved adapter was trained as, from its PEFT config: the registered variant
    whose PEFT settings it carries (the most specific one; plain LoRA when none)."""
    fits = [v for v in VARIANTS.values() if all(getattr(peft_config, k, None) == x for k, x in v.peft.items())]
    return max(fits, key=lambda v: len(v.peft))


def lora_settings(arm) -> dict:
    """The variant's settings for PEFT's LoraConfig (all False for plain LoRA)."""
    return {"use_rslora": False, "use_dora": False, **variant(arm).peft}


def lr_grid(arm, full: list[float], lora: list[float]) -> list[float]:
    """The learning-rate grid of an arm: full's grid, or the LoRA grid divided by the variant's rule."""
    if is_full(arm):
        return list(full)
    d = variant(arm).lr_divisor(arm.rank)
    return list(lora) if d == 1.0 else [lr / d for lr in lora]


def default_lr(arm, lr_full: float, lr_lora: float) -> float:
    """The learning rate of an arm when none is searched or given."""
    return lr_full if is_full(arm) else lr_lora
