"""Arm names, their order and labels, without torch: every module that names, sorts or parses arms asks here.

An arm is ``base``, ``full`` or ``<prefix>-r<rank>``: prefix ``lora`` for plain LoRA, else the
variant's own name (``rslora-r8``, ``dora-r8``). In an `ArmBank` a trained LoRA arm is
``<arm>@<seed>`` (its seed's adapter); base and full keep their names. PEFT adapter names cannot
hold dots, hence :func:`adapter_key`.
"""

from __future__ import annotations

from lorafair.arms.kinds import BASE, FULL, VARIANTS

REFERENCES = (BASE, FULL)  # the arms every other arm is measured against
LORA_VARIANTS = tuple(VARIANTS)  # the registered variants (lorafair.arms.kinds)
PEFT_BASE = "__base__"  # the adapter name PEFT reads as "no adapter" in a mixed batch
VARIANT_LABELS = {v.prefix: v.label for v in VARIANTS.values()}  # name prefix -> how it is written


def lora_name(variant: str, rank: int) -> str:
    """``("plain", 8)`` → ``"lora-r8"``; ``("dora", 8)`` → ``"dora-r8"``."""
    return f"{VARIANTS[variant].prefix}-r{rank}"


def arm_rank(name: str) -> tuple[str, int | None]:
    """``"rslora-r8"`` → ``("rslora", 8)``; ``"base"`` → ``("base", None)``."""
    head, sep, tail = name.rpartition("-r")
    if sep and head and tail.isdigit():
        return head, int(tail)
    return name, None


def arm_order(name: str) -> tuple:
    """Sort key: base first, then the LoRA arms by rank, full last."""
    if name == BASE:
        return (0, 0, name)
    if name == FULL:
        return (2, 0, name)
    return (1, arm_rank(name)[1] or 0, name)


def arm_label(name: str) -> str:
    """``lora-r8`` → "LoRA r=8"; ``full`` → "full fine-tuning"; ``base`` → "the base model"."""
    if name == FULL:
        return "full fine-tuning"
    if name == BASE:
        return "the base model"
    variant, rank = arm_rank(name)
    if rank is None:
        return name
    return f"{VARIANT_LABELS.get(variant, variant)} r={rank}"


def bank_name(name: str, seed: int) -> str:
    """The name arm ``name`` trained with ``seed`` has in an ArmBank: base, full, or '<arm>@<seed>'."""
    return name if name in REFERENCES else f"{name}@{seed}"


def adapter_key(name: str) -> str:
    """The PEFT adapter name of a bank arm (``PEFT_BASE`` for base: adapters off)."""
    return PEFT_BASE if name == BASE else name.replace(".", "_")
