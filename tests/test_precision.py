"""model.precision: which dtype `auto` picks (with the hardware probe forced either way), bf16 vs
float32 numerics on the tiny random model, float32 unchanged, and the precision recorded in a run.

Tolerances (tiny-random, 2 layers, d=64, vocabulary 49k, losses about 10.8): bf16 training losses
within 5e-3 of float32 over 4 steps (seen: 5e-4); sequence log-likelihoods within 1% of their
magnitude; per-token KL between an arm's bf16 and float32 next-token distributions below 1e-3 nats;
lens logits within 0.1 (logits of size about 1). bf16 keeps 8 bits of mantissa (relative rounding
4e-3), so these bounds are a few roundings wide, and a float32 path mistaken for a bf16 one fails
the check that the two differ at all.
"""

from __future__ import annotations

import pytest
import torch

from lorafair.analysis import lens
from lorafair.analysis.kl import token_kl
from lorafair.arms.bank import ArmBank, save_final, wrap_for_training
from lorafair.models import lm
from lorafair.models import precision as prec
from lorafair.models import sources as models
from lorafair.study.config import Arm, TrainingConfig, study_from_dict
from lorafair.study.context import Context
from lorafair.training.encoding import encode
from lorafair.training.loop import train

from conftest import CORPUS

LORA = Arm("lora-r2", "lora", rank=2, alpha=4.0, target_modules=("q_proj", "v_proj"))
FULL = Arm("full", "full")
TEXTS = ["The garden was quiet.", "A basket of apples and pears for everyone in the house.", "Hi"]

# Computed with the code before model.precision existed (float32 only), same settings as _train.
BASE_FLOAT32 = {
    "full": [10.832697868347168, 10.564045906066895, 10.430839538574219, 10.394214630126953],
    "lora": [10.832697868347168, 10.814757347106934, 10.775300025939941, 10.757153511047363],
    "loglik": [-53.7824821472168, -130.53204345703125, -10.867093086242676],
}


def _train(tok, arm: Arm, dtype):
    rows = encode(tok, CORPUS, 32)
    model = wrap_for_training(models.load_model("tiny-random", seed=0), arm, seed=0)
    cfg = TrainingConfig(max_steps=4, batch_size=4, max_length=32, eval_every=2, checkpoint_every=100)
    res = train(model, arm, rows[:20], rows[20:], cfg, seed=0, lr=1e-3 if arm.type == "full" else 1e-2,
                pad_id=tok.pad_token_id, autocast=dtype)
    return model, res


# ---------------------------------------------------------------- which dtype


def test_auto_follows_the_cpu_probe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(prec, "cpu_bf16", lambda: False)
    assert prec.resolve("auto") == torch.float32 and prec.resolve("auto", "cpu") == torch.float32
    assert models.pick_dtype("auto") == torch.float32
    monkeypatch.setattr(prec, "cpu_bf16", lambda: True)
    assert prec.resolve("auto") == torch.bfloat16 and models.pick_dtype("auto") == torch.bfloat16
    assert prec.resolve("float32") == torch.float32 and prec.resolve("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError):
        prec.resolve("fp8")


def test_auto_on_cuda_asks_the_gpu(monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16", lambda: True)  # the GPU decides, not the host CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert prec.resolve("auto", "cuda") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert prec.resolve("auto", "cuda") == torch.bfloat16


@pytest.mark.parametrize("flags, expected", [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True),
                                             ({"amx_tile", "amx_bf16"}, True), (set(), False)])
def test_cpu_probe_reads_the_flags_without_torch_probes(monkeypatch, flags, expected):
    for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, n, raising=False)
    monkeypatch.setattr(prec, "cpu_flags", lambda: flags)
    assert prec.cpu_bf16() is expected


def test_cpu_probe_agrees_with_cpuinfo():
    """torch's probe and the kernel's flags tell the same story on this machine."""
    flags = prec.cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this system")
    assert prec.cpu_bf16() == bool(flags & set(prec.CPU_FLAGS))


def test_context_falls_back_to_float32_without_bf16(monkeypatch, tiny_study):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(prec, "cpu_bf16", lambda: False)
    ctx = Context(study_from_dict(tiny_study(model={"precision": "auto"}), "s.yaml"), lambda m: None)
    assert ctx.autocast == torch.float32 and prec.model_dtype(ctx.base_model()) == torch.float32
    monkeypatch.setattr(prec, "cpu_bf16", lambda: True)
    ctx = Context(study_from_dict(tiny_study(model={"precision": "auto"}), "s.yaml"), lambda m: None)
    assert ctx.autocast == torch.bfloat16 and prec.model_dtype(ctx.base_model()) == torch.bfloat16
    assert prec.session() == "auto"
    prec.set_session("auto")


# ---------------------------------------------------------------- float32 unchanged


@pytest.mark.parametrize("arm", [FULL, LORA], ids=["full", "lora"])
def test_float32_reproduces_the_numbers_before_precision(tok, arm):
    """The float32 path casts nothing and turns autocast off: the loss curve is that of the code
    before bf16 existed (bit-identical on the machine that recorded BASE_FLOAT32; 1e-6 relative
    leaves room for another CPU's float32 kernels)."""
    for dtype in (None, torch.float32):
        model, res = _train(tok, arm, dtype)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert res.precision == "float32"
        assert [r["loss"] for r in res.log] == pytest.approx(BASE_FLOAT32[arm.type], rel=1e-6)


def test_float32_scoring_unchanged(tok):
    m = prec.for_inference(models.load_model("tiny-random", seed=0), torch.float32).eval()
    total, count = lm.sequence_loglik(m, tok, TEXTS, batch_size=2)
    assert total.tolist() == pytest.approx(BASE_FLOAT32["loglik"], rel=1e-6)
    assert count.tolist() == [5.0, 12.0, 1.0]


# ---------------------------------------------------------------- bf16 against float32


@pytest.mark.parametrize("arm", [FULL, LORA], ids=["full", "lora"])
def test_bf16_training_matches_float32(tok, arm):
    m32, r32 = _train(tok, arm, torch.float32)
    m16, r16 = _train(tok, arm, torch.bfloat16)
    a, b = [r["loss"] for r in r32.log], [r["loss"] for r in r16.log]
    assert r16.precision == "bfloat16"
    assert max(abs(x - y) for x, y in zip(a, b)) < 5e-3
    assert a != b  # bf16 really ran: rounding shows in the losses
    v32, v16 = [r["val_loss"] for r in r32.val_curve], [r["val_loss"] for r in r16.val_curve]
    assert max(abs(x - y) for x, y in zip(v32, v16)) < 5e-3
    trained = {n: p for n, p in m16.named_parameters() if p.requires_grad}
    assert trained and all(p.dtype == torch.float32 for p in trained.values())  # master weights
    frozen = [p for p in m16.parameters() if not p.requires_grad]
    if arm.type == "lora":
        assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # the base stored in bf16
    else:
        assert not frozen
    # and the training moved the weights about as far in both precisions
    d32 = {n: p for n, p in m32.named_parameters() if p.requires_grad}
    for n, p in trained.items():
        assert torch.allclose(p.float(), d32[n].float(), atol=2e-2), n


def _bank(tok, tmp_path, dtype):
    """A bank with a LoRA adapter whose B is not zero (trained for 4 steps in float32, saved once)."""
    folder = tmp_path / "adapter"
    if not folder.exists():
        model, _ = _train(tok, LORA, torch.float32)
        with torch.no_grad():  # a visible update, so the arm differs from the base
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.add_(0.05 * torch.randn_like(p))
        save_final(model, LORA, folder)
    base = prec.for_inference(models.load_model("tiny-random", seed=0), dtype).eval()
    bank = ArmBank(base)
    bank.add_lora("lora", folder)
    return bank


def _batch(tok):
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_bf16_kl_lens_and_probe_values_match_float32(tok, tmp_path):
    ids, attn = _batch(tok)
    b32, b16 = _bank(tok, tmp_path, torch.float32), _bank(tok, tmp_path, torch.bfloat16)
    assert b16.dtype == torch.bfloat16 and b32.dtype == torch.float32
    real = attn.bool()
    for arm in ("base", "lora"):
        l32, l16 = b32.logits(arm, ids, attn), b16.logits(arm, ids, attn)
        assert l16.dtype == torch.float32  # logits come back float32 for every reduction
        kl = token_kl(l32, l16)[real]
        assert 0 < float(kl.max()) < 1e-3, arm
    # the arm-vs-base KL, the number the analyses report, is the same in both precisions
    shift32 = token_kl(b32.logits("lora", ids, attn), b32.logits("base", ids, attn))[real]
    shift16 = token_kl(b16.logits("lora", ids, attn), b16.logits("base", ids, attn))[real]
    assert float(shift32.mean()) > 1e-3
    assert float(shift16.mean()) == pytest.approx(float(shift32.mean()), rel=0.1, abs=2e-4)
    # Logit Lens, every layer
    with b32.use("lora") as m32, b16.use("lora") as m16:
        for x, y in zip(lens.layer_logits(m32, ids, attn), lens.layer_logits(m16, ids, attn)):
            assert y.dtype == torch.float32
            assert float((x - y)[real].abs().max()) < 0.1
        # probe values: summed log-likelihoods of texts
        t32, _ = lm.sequence_loglik(m32, tok, TEXTS, batch_size=2)
        t16, _ = lm.sequence_loglik(m16, tok, TEXTS, batch_size=2)
        assert torch.allclose(t16, t32, rtol=1e-2)
        assert not torch.equal(t16, t32)


def test_full_arm_joins_the_bank_in_its_precision(tok, tmp_path):
    b16 = _bank(tok, tmp_path, torch.bfloat16)
    b16.add_full(models.load_model("tiny-random", seed=1))
    assert prec.model_dtype(b16.full) == torch.bfloat16
    assert all(b.dtype == torch.float32 for b in b16.full.buffers() if b.is_floating_point())  # rotary stays float32


# ---------------------------------------------------------------- a whole run in bf16


def test_bf16_run_records_its_precision(tiny_study, tmp_path):
    from lorafair.report.load import load_run
    from lorafair.study.runner import Runner
    from lorafair.report.html import provenance
    from lorafair.store.rundir import read_json

    d = tiny_study(model={"precision": "bfloat16"}, analyses={"kl": True, "lens": True, "weights": True,
                                                              "n_sequences": 4, "batch_size": 4})
    Runner(study_from_dict(d, "s.yaml"), log=lambda m: None).run(report=False)
    prec.set_session("auto")
    run = load_run(tmp_path / "run")
    assert {v.get("precision") for v in run.done.values()} == {"bfloat16"}
    assert all(str(v["model_hash"]).endswith("@bfloat16") for v in run.done.values())
    assert dict(provenance(run))["precision"] == "bfloat16 (model.precision: bfloat16)"
    kl = read_json(tmp_path / "run" / "analysis" / "kl.json")
    assert kl["arms"]["lora-r2"]["kl_arm_base"]["mean"] > 0
    # ΔW comes from the float32 weights: the same numbers as a float32 bank gives on the saved arms
    got = read_json(tmp_path / "run" / "analysis" / "weights.json")
    from lorafair.study.session import open_session

    runner = open_session(study_from_dict({**d, "model": {**d["model"], "precision": "float32"}}, "s.yaml"),
                          log=lambda m: None)
    bank = ArmBank(models.load_model("tiny-random", seed=0).eval())
    bank.add_lora("lora-r2@0", runner.rd.weights_dir("lora-r2", 0, "lora"))
    bank.add_full(runner.load_full(0))
    from lorafair.study.analyses import weight_analysis

    ref = weight_analysis(runner.study, runner.rd, runner.arms, bank, {"full": "full", "lora-r2": "lora-r2@0"}, None)
    for a, b in zip(got["by_depth"]["full"], ref["by_depth"]["full"]):
        assert a["sq_norm"] == pytest.approx(b["sq_norm"], rel=1e-6) and a["sq_norm"] > 0
    assert got["arms"]["lora-r2"]["rel_norm"] == pytest.approx(ref["arms"]["lora-r2"]["rel_norm"], rel=1e-6)
