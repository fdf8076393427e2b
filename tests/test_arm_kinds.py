"""Arm kinds and LoRA variants as records: the records drive PEFT settings, learning-rate grids,
batch sharing and names, and match what the string tests they replaced did."""

from __future__ import annotations

import math
from types import SimpleNamespace as NS

import pytest

from lorafair.arms import kinds
from lorafair.arms.names import LORA_VARIANTS, VARIANT_LABELS, lora_name
from lorafair.study.config import Arm


def _lora(variant: str, rank: int = 8) -> Arm:
    return Arm(name=lora_name(variant, rank), type="lora", rank=rank, alpha=2.0 * rank, variant=variant,
               target_modules=("q_proj",))


def test_kinds_of_the_three_arm_types():
    base, full, lora = Arm("base", "base"), Arm("full", "full"), _lora("plain")
    assert [kinds.trains(a) for a in (base, full, lora)] == [False, True, True]
    assert [kinds.is_reference(a) for a in (base, full, lora)] == [True, True, False]
    assert [kinds.own_process(a) for a in (base, full, lora)] == [False, True, False]
    assert kinds.default_lr(full, 1e-5, 1e-3) == 1e-5 and kinds.default_lr(lora, 1e-5, 1e-3) == 1e-3


def test_variant_records_give_the_settings_the_string_tests_gave():
    for v in LORA_VARIANTS:
        arm = _lora(v)
        assert kinds.lora_settings(arm) == {"use_rslora": v == "rslora", "use_dora": v == "dora"}
    assert [lora_name(v, 4) for v in ("plain", "rslora", "dora")] == ["lora-r4", "rslora-r4", "dora-r4"]
    assert VARIANT_LABELS == {"lora": "LoRA", "rslora": "rsLoRA", "dora": "DoRA"}


@pytest.mark.parametrize("rank", [1, 2, 8, 13])
def test_learning_rate_grids_follow_the_variant_rule(rank):
    full, lora = [1e-5, 3e-5, 1e-4], [1e-4, 3e-4, 1e-3]
    assert kinds.lr_grid(Arm("full", "full"), full, lora) == full
    assert kinds.lr_grid(_lora("plain", rank), full, lora) == lora
    assert kinds.lr_grid(_lora("dora", rank), full, lora) == lora
    assert kinds.lr_grid(_lora("rslora", rank), full, lora) == [lr / math.sqrt(rank) for lr in lora]  # bit for bit


def test_a_saved_adapter_is_recognised_and_dora_does_not_share_batches():
    assert kinds.variant_of(NS(use_dora=True, use_rslora=False)).name == "dora"
    assert kinds.variant_of(NS(use_dora=False, use_rslora=True)).name == "rslora"
    assert kinds.variant_of(NS(use_dora=False, use_rslora=False)).name == "plain"
    assert [v.shares_batch for v in kinds.VARIANTS.values()] == [True, True, False]


def test_a_variant_is_registered_once(monkeypatch):
    monkeypatch.setattr(kinds, "VARIANTS", dict(kinds.VARIANTS))
    v = kinds.register_variant(kinds.Variant("half", "half", "Half-LoRA", {"use_rslora": True},
                                             lr_divisor=lambda r: 2.0))
    assert kinds.lr_grid(NS(type="lora", variant="half", rank=4), [1.0], [1.0, 3.0]) == [0.5, 1.5]
    with pytest.raises(ValueError, match="already registered"):
        kinds.register_variant(v)
