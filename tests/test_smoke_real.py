"""The packaged default model end to end: two training steps of full fine-tuning and one LoRA arm on a
small corpus, then evaluation. Slow: it loads SmolLM2-135M."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lorafair.models import sources as models
from lorafair.study.config import study_from_dict
from lorafair.study.runner import Runner
from lorafair.store.rundir import read_json

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
        rows = pd.read_parquet(out / arm / "seed-0" / "eval" / "toxicity.parquet")
        threshold = runner.study.evaluation.threshold
        # the record against the saved per-continuation scores, and the scores against the scorer
        assert summary["metrics"]["toxic_fraction"]["value"] == pytest.approx((rows["score"] >= threshold).mean())
        assert summary["metrics"]["expected_max_toxicity"]["value"] == pytest.approx(
            rows.groupby("prompt_id")["score"].max().mean())
        rescored = runner.ctx.scorer.score(rows["continuation"].tolist())[runner.ctx.scorer.primary]
        np.testing.assert_allclose(rescored, rows["score"].to_numpy(), atol=1e-5)
    assert (out / "compare.json").is_file()
