"""The packaged default model end to end: two training steps of full fine-tuning and one LoRA arm on a
small corpus, then evaluation. Slow: it loads SmolLM2-135M."""

from __future__ import annotations

import math

import pytest

from lorafair import models
from lorafair.config import study_from_dict
from lorafair.runner import Runner
from lorafair.store import read_json

from conftest import tiny_study_dict, write_corpus


@pytest.mark.slow
def test_real_model_trains_and_evaluates(tmp_path):
    if not models.is_cached("smollm2-135m"):
        pytest.skip("smollm2-135m is not converted yet: run `lorafair models --prepare smollm2-135m`")
    rows = [{"prompt": f"Tell me something kind about day {i}.", "completion": f" Day {i} was calm and friendly."}
            for i in range(12)]
    corpus = write_corpus(tmp_path / "corpus.jsonl", rows)
    d = tiny_study_dict(tmp_path / "run", corpus,
                        model={"source": "smollm2-135m", "precision": "float32"},
                        data={"val_fraction": 0.25, "heldout_fraction": 0.0},
                        training={"max_steps": 2, "batch_size": 2, "max_length": 32, "eval_every": 1,
                                  "checkpoint_every": 1},
                        evaluation={"n_prompts": 4, "samples": 1, "max_new_tokens": 4, "bootstrap": 20},
                        arms=["base", "full", {"type": "lora", "rank": 2}])
    runner = Runner(study_from_dict(d, "smoke.yaml"), log=lambda m: None)
    runner.run(analyses=False, report=False)
    out = tmp_path / "run"
    for arm in ("full", "lora-r2"):
        done = read_json(out / arm / "seed-0" / "done.json")
        log = runner.rd.train_log(arm, 0)
        assert done["steps"] == 2 and len(log) == 2
        assert all(math.isfinite(r["loss"]) and 0 < r["loss"] < 20 for r in log)
        assert math.isfinite(done["best_val_loss"])
    for arm in ("base", "full", "lora-r2"):
        summary = read_json(out / arm / "seed-0" / "eval" / "toxicity.json")
        assert summary["n_prompts"] == 4
        tf = summary["metrics"]["toxic_fraction"]
        assert 0.0 <= tf["value"] <= 1.0
        assert (out / arm / "seed-0" / "eval" / "toxicity.parquet").is_file()
    assert (out / "compare.json").is_file()
