"""Arms sharing forward passes: base and LoRA adapters as rows of one batch (PEFT `adapter_names`)
give the same logits, KL summaries and continuations as running each arm on its own."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lorafair.models import sources as models
from lorafair.analysis.shift import compute_pairwise_kl
from lorafair.arms.bank import ArmBank

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def save_adapter(path, seed: int, dora: bool = False):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=dora, task_type="CAUSAL_LM")
    m = get_peft_model(models.load_model("tiny-random"), cfg)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.3)
    m.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    b = ArmBank(models.load_model("tiny-random").eval())
    b.add_lora("lora-r4@0", save_adapter(root / "a", 1))
    b.add_lora("lora-r4.rs@0", save_adapter(root / "b", 2))
    b.add_lora("dora@0", save_adapter(root / "c", 3, dora=True))
    return b


@pytest.fixture(scope="module")
def batch(tok):
    tok = copy.copy(tok)
    tok.padding_side = "right"
    enc = tok(["The cat sat on the mat today", "A dog", "Some people think that a"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_mixable_leaves_out_dora_and_full(bank):
    assert bank.mixable(["base", "lora-r4@0", "dora@0", "full", "lora-r4.rs@0"]) == ["base", "lora-r4@0", "lora-r4.rs@0"]
    assert ArmBank(models.load_model("tiny-random")).mixable(["base"]) == []  # no adapters loaded


def test_logits_many_equal_one_arm_at_a_time(bank, batch):
    ids, attn = batch
    names = ["lora-r4@0", "base", "dora@0", "lora-r4.rs@0"]
    with torch.no_grad():
        many = bank.logits_many(names, ids, attn)
        for n in names:
            with bank.use(n) as m:
                alone = m(input_ids=ids, attention_mask=attn).logits.float()
            torch.testing.assert_close(many[n], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(many["lora-r4@0"], many["base"], atol=1e-3)  # the adapters matter


def test_pairwise_kl_with_shared_forwards_equals_per_arm(bank, batch):
    ids, attn = batch
    batches = [{"input_ids": ids, "attention_mask": attn}, {"input_ids": ids[:2], "attention_mask": attn[:2]}]
    arms = ["base", "lora-r4@0", "dora@0", "lora-r4.rs@0"]
    calls = []

    def logits_fn(arm, i, a):
        calls.append(arm)
        with bank.use(arm) as m:
            return m(input_ids=i, attention_mask=a).logits.float()

    alone = compute_pairwise_kl(logits_fn, arms, batches, reference=("base", None), n_boot=50)
    grouped = compute_pairwise_kl(logits_fn, arms, batches, reference=("base", None), n_boot=50,
                                  logits_many=bank.logits_many, group_rows=64)
    for arm in arms:
        for col, v in alone["summary"]["arms"][arm].items():
            if isinstance(v, dict):
                for k in v:
                    np.testing.assert_allclose(grouped["summary"]["arms"][arm][col][k], v[k], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grouped["rows"]["kl_arm_base"], alone["rows"]["kl_arm_base"], rtol=1e-4, atol=1e-7)
    assert (grouped["rows"][["arm", "seq", "pos"]].values == alone["rows"][["arm", "seq", "pos"]].values).all()
    # grouped: per batch only the reference went through logits_fn; the rest came from logits_many
    assert calls.count("lora-r4@0") == 2 + 0 and calls.count("base") == 2 + 2


def test_study_evaluation_with_shared_batches_equals_one_arm_at_a_time(tmp_path):
    """A whole toxicity evaluation: base and plain LoRA arms generate together (DoRA and full alone);
    every arm's continuations and scores equal those of evaluating each arm by itself. Temperature
    0.2: the streams still decide the picks (another evaluation seed changes them), while the
    tiny model's near-uniform distribution is sharpened enough that float rounding moves none."""
    import dataclasses

    from conftest import tiny_study_dict, write_corpus
    from lorafair.study.config import study_from_dict
    from lorafair.study.runner import Runner

    corpus = write_corpus(tmp_path / "corpus.jsonl")
    arms = ["base", "full", {"type": "lora", "rank": 2}, {"type": "lora", "rank": 4},
            {"type": "lora", "rank": 2, "variant": "dora"}]
    d = tiny_study_dict(tmp_path / "run", corpus, arms=arms, training={"max_steps": 2},
                        evaluation={"samples": 2, "n_prompts": 3, "max_new_tokens": 4, "temperature": 0.2})
    study = study_from_dict(d, "tiny.yaml")
    logs: list[str] = []
    mixed = Runner(study, log=logs.append).run(analyses=False, report=False)
    assert any("generated for 3 arms together" in m for m in logs), logs
    alone_study = dataclasses.replace(study, evaluation=dataclasses.replace(study.evaluation, mix_arms=False))
    import shutil

    for folder in (tmp_path / "run").glob("*/seed-*/eval"):
        shutil.rmtree(folder)  # evaluate again (training stays: the same adapters)
    logs.clear()
    alone = Runner(alone_study, log=logs.append).run(analyses=False, report=False)
    assert not any("together" in m for m in logs)
    assert sum(m.startswith("evaluated") for m in logs) == 5, logs
    assert set(mixed) == set(alone) and len(mixed) == 5
    assert list(mixed[("base", 0)]["continuation"]) != list(mixed[("lora-r2", 0)]["continuation"])
    for key in mixed:
        cols = ["prompt_id", "sample", "continuation", "score"]
        assert mixed[key][cols].equals(alone[key][cols]), key
