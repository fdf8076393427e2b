"""The learning-rate search: grid rules, bracketing by extension, candidates on a prefix of the final
schedule, the rsLoRA grid rule, and the best-validation weights kept whether or not early stopping fired."""

from __future__ import annotations

import dataclasses
import math

import pytest

from lorafair.study.config import Arm, LRSearchConfig, TrainingConfig, study_from_dict
from lorafair.errors import UserError
from lorafair.training.lr_search import bracket, check_grids, grid_factor, lr_grid
from lorafair.training.encoding import encode
from lorafair.training.loop import train, validation_loss

from conftest import tiny_study_dict
from test_train import FULL, enc, fresh  # noqa: F401  (fixtures shared with the training tests)

LORA = Arm("lora-r4", "lora", rank=4, alpha=8.0, target_modules=("q_proj", "v_proj"))
RSLORA = dataclasses.replace(LORA, name="rslora-r4", variant="rslora")


def parabola(best_log10: float, diverge_above: float = math.inf):
    """A validation loss with its minimum at 10**best_log10; None (diverged) above a rate."""
    calls = []

    def run(lr: float):
        calls.append(lr)
        return None if lr > diverge_above else (math.log10(lr) - best_log10) ** 2 + 1.0

    return run, calls


# ---------------------------------------------------------------- grids


def test_grid_factor_and_the_default_grids():
    assert grid_factor([1e-5, 3e-5, 1e-4]) == pytest.approx(math.sqrt(10))
    s = LRSearchConfig()
    check_grids(s.full, s.lora, "training.lr_search")  # the defaults obey the rule
    assert len(s.full) == len(s.lora) >= 3


@pytest.mark.parametrize("full, lora, words", [
    ([1e-5, 3e-5, 1e-4], [1e-4, 3e-4, 1e-3, 3e-3], "same number"),
    ([1e-5, 1e-4], [1e-4, 1e-3], "at least 3"),
    ([1e-5, 2e-5, 1e-4], [1e-4, 3e-4, 1e-3], "log grid"),  # factors 2 and 5
    ([1e-4, 3e-5, 1e-5], [1e-4, 3e-4, 1e-3], "log grid"),  # decreasing
    ([0.0, 3e-5, 1e-4], [1e-4, 3e-4, 1e-3], "> 0"),
])
def test_bad_grids_are_refused_in_one_line(full, lora, words):
    with pytest.raises(UserError) as e:
        check_grids(full, lora, "s.yaml: training.lr_search")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_study_with_unequal_grids_is_refused(tmp_path):
    d = tiny_study_dict(tmp_path / "run", tmp_path / "c.jsonl",
                        training={"lr_search": {"full": [1e-5, 3e-5, 1e-4], "lora": [1e-4, 1e-3]}})
    with pytest.raises(UserError, match="training.lr_search"):
        study_from_dict(d, "s.yaml")


def test_rslora_grid_is_the_lora_grid_over_sqrt_rank():
    s = LRSearchConfig(lora=[1e-4, 4e-4, 1.6e-3])
    assert lr_grid(LORA, s) == s.lora and lr_grid(FULL, s) == s.full
    assert lr_grid(RSLORA, s) == pytest.approx([x / 2 for x in s.lora])  # rank 4: sqrt(4) = 2
    odd = dataclasses.replace(RSLORA, alpha=3.0)  # the rule holds whatever alpha
    assert lr_grid(odd, s) == pytest.approx([x / 2 for x in s.lora])


def test_rslora_at_its_grid_rate_makes_the_same_first_update_as_lora(tok, enc):
    """The reason for the rule: one Adam step of rsLoRA at lr / sqrt(r) changes W as much as plain
    LoRA at lr (same adapter init; rsLoRA's scaling is sqrt(r) times LoRA's)."""
    c = TrainingConfig(max_steps=1, batch_size=4, max_length=32, warmup_ratio=0.0, schedule="constant", eval_every=5)
    deltas = {}
    for arm, lr in ((LORA, 1e-3), (RSLORA, 1e-3 / 2), (RSLORA, 1e-3)):
        model = fresh(arm)
        train(model, arm, enc[0], [], c, 0, lr, tok.pad_token_id)
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        deltas[(arm.variant, lr)] = layer.get_delta_weight("default")
    plain = deltas[("plain", 1e-3)]
    rel = {k: float((d - plain).norm() / plain.norm()) for k, d in deltas.items()}
    # equal up to Adam's epsilon on the smallest gradients; at LoRA's own rate rsLoRA moves twice as far
    assert plain.abs().max() > 0 and rel[("rslora", 1e-3 / 2)] < 0.02
    assert float(deltas[("rslora", 1e-3)].norm() / plain.norm()) == pytest.approx(2.0, rel=0.02)


# ---------------------------------------------------------------- bracketing


def test_interior_best_needs_no_extension():
    run, calls = parabola(-4.0)
    found = bracket([1e-5, 1e-4, 1e-3], run, 2)
    assert found["chosen"] == 1e-4 and found["interior"] and found["extensions"] == []
    assert calls == [1e-5, 1e-4, 1e-3]


def test_best_at_the_top_edge_extends_upwards_until_interior():
    run, calls = parabola(-1.9)  # optimum near 1.26e-2
    found = bracket([1e-5, 1e-4, 1e-3], run, 3)
    assert calls == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    assert [e["edge"] for e in found["extensions"]] == ["high", "high"]
    assert found["chosen"] == pytest.approx(1e-2) and found["interior"]
    assert [c["lr"] for c in found["candidates"]] == pytest.approx(calls)


def test_best_at_the_low_edge_extends_downwards():
    run, calls = parabola(-6.2)
    found = bracket([1e-5, 1e-4, 1e-3], run, 2)
    assert calls[3:] == pytest.approx([1e-6, 1e-7])
    assert found["chosen"] == pytest.approx(1e-6) and found["interior"]
    assert [e["edge"] for e in found["extensions"]] == ["low", "low"]


def test_the_extension_limit_is_recorded():
    run, calls = parabola(2.0)  # far above the grid
    found = bracket([1e-5, 1e-4, 1e-3], run, 2)
    assert len(calls) == 5 and found["chosen"] == pytest.approx(1e-1)
    assert not found["interior"] and len(found["extensions"]) == 2
    found0 = bracket([1e-5, 1e-4, 1e-3], parabola(2.0)[0], 0)
    assert found0["chosen"] == 1e-3 and not found0["interior"] and found0["extensions"] == []


def test_a_diverged_rate_bounds_the_grid():
    run, calls = parabola(2.0, diverge_above=5e-4)  # would go on upwards, but 1e-3 diverges
    found = bracket([1e-5, 1e-4, 1e-3], run, 2)
    assert calls == [1e-5, 1e-4, 1e-3] and found["chosen"] == 1e-4 and found["interior"]
    assert found["candidates"][2] == {"lr": 1e-3, "val_loss": None}
    with pytest.raises(UserError, match="every learning rate"):
        bracket([1e-5, 1e-4, 1e-3], parabola(0, diverge_above=0.0)[0], 2)


# ---------------------------------------------------------------- candidates and kept weights


def test_a_candidate_is_the_prefix_of_the_final_run(tok, enc):
    """stop_after=k on an S-step schedule: the same losses and rates as the first k steps of the S-step run."""
    c = TrainingConfig(max_steps=8, batch_size=4, max_length=32, warmup_ratio=0.25, schedule="cosine", eval_every=3)
    whole = train(fresh(LORA), LORA, *enc, c, 0, 1e-2, tok.pad_token_id)
    part = train(fresh(LORA), LORA, *enc, c, 0, 1e-2, tok.pad_token_id, stop_after=4, keep_best=False)
    assert part.steps == 4 and len(part.log) == 4
    assert [(r["loss"], r["lr"]) for r in part.log] == [(r["loss"], r["lr"]) for r in whole.log[:4]]
    assert part.val_curve[-1]["step"] == 4 and part.final_val_loss == part.val_curve[-1]["val_loss"]
    assert whole.log[-1]["lr"] < part.log[-1]["lr"]  # the decay goes on after the prefix
    # a short schedule of its own would have decayed to the end within 4 steps: not the same rates
    own = train(fresh(LORA), LORA, *enc, c, 0, 1e-2, tok.pad_token_id, steps=4)
    assert [r["lr"] for r in own.log] != [r["lr"] for r in part.log]


def test_best_validation_weights_are_kept_without_early_stopping(tok):
    prompts = [f"Item {i}: the colour is" for i in range(8)]
    train_rows = encode(tok, [{"prompt": p, "completion": " red"} for p in prompts], 32)
    val_rows = encode(tok, [{"prompt": p, "completion": " blue"} for p in prompts], 32)
    c = TrainingConfig(max_steps=30, batch_size=4, max_length=32, warmup_ratio=0.0, eval_every=1, schedule="constant")
    model = fresh(FULL)
    res = train(model, FULL, train_rows, val_rows, c, 0, 3e-3, tok.pad_token_id)
    vals = [v["val_loss"] for v in res.val_curve]
    assert not res.stopped_early and len(vals) == 30 and min(vals) < vals[-1]
    assert res.restored_best and res.best_step == res.val_curve[vals.index(min(vals))]["step"]
    assert validation_loss(model, val_rows, tok.pad_token_id, 4) == pytest.approx(min(vals), rel=1e-6)
    # without keep_best the model is the last one
    last = fresh(FULL)
    res2 = train(last, FULL, train_rows, val_rows, c, 0, 3e-3, tok.pad_token_id, keep_best=False)
    assert not res2.restored_best
    assert validation_loss(last, val_rows, tok.pad_token_id, 4) == pytest.approx(vals[-1], rel=1e-6)



def test_the_report_says_how_the_search_bracketed():
    from lorafair.report.html import _bracketing

    assert _bracketing({"candidates": []}) == ""  # a record from before bracketing
    assert _bracketing({"interior": True, "extensions": []}) == "; optimum interior"
    assert _bracketing({"interior": False, "extensions": [{"edge": "high", "lr": 1e-2}, {"edge": "high", "lr": 1e-1}]}) \
        == "; grid extended 2× (high 0.01, high 0.1); optimum still at an edge of the grid"
