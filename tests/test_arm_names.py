"""Arm names: parsing, order, bank and adapter names; the module imports without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lorafair.arms.names import adapter_key, arm_label, arm_order, arm_rank, bank_name, lora_name


def test_lora_name_and_rank_round_trip():
    for variant, prefix in (("plain", "lora"), ("rslora", "rslora"), ("dora", "dora")):
        assert lora_name(variant, 8) == f"{prefix}-r8"
        assert arm_rank(lora_name(variant, 8)) == (prefix, 8)


def test_order_base_then_ranks_then_full():
    names = ["full", "lora-r16", "my-run", "base", "lora-r2", "dora-r2"]
    assert sorted(names, key=arm_order) == ["base", "my-run", "dora-r2", "lora-r2", "lora-r16", "full"]


def test_labels():
    assert [arm_label(a) for a in ("base", "full", "lora-r8", "rslora-r4", "dora-r2", "my-run")] == [
        "the base model", "full fine-tuning", "LoRA r=8", "rsLoRA r=4", "DoRA r=2", "my-run"]


def test_bank_and_adapter_names():
    assert bank_name("base", 3) == "base" and bank_name("full", 3) == "full"
    assert bank_name("lora-r2", 3) == "lora-r2@3"
    assert adapter_key("base") == "__base__" and adapter_key("lora-r2@3") == "lora-r2@3"
    assert adapter_key("a.b") == "a_b"


@pytest.mark.slow
def test_imports_without_torch():
    code = "import sys, lorafair.arms.names; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
