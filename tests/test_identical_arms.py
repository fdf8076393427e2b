"""Two LoRA arms of the same rank and seed on the tiny random model: the comparison calls them
equivalent when the evaluation has enough prompts to say so, and inconclusive when it has not."""

from __future__ import annotations

import pandas as pd
import pytest

from lorafair.stats import equivalence

from lorafair.study import runner as runner_mod
from lorafair.study.config import study_from_dict
from lorafair.study.context import Context


def _run(tiny_study, tmp_path, name: str, eval_seed: int, monkeypatch) -> runner_mod.Runner:
    """Train LoRA r=2 with seed 0 and evaluate it on the evaluation sampling stream ``eval_seed``."""
    d = tiny_study(arms=[{"type": "lora", "rank": 2}], output=str(tmp_path / name),
                   evaluation={"samples": 2, "n_prompts": 200, "max_new_tokens": 4})
    monkeypatch.setattr(Context, "eval_seed", eval_seed)
    r = runner_mod.Runner(study_from_dict(d, f"{name}.yaml"), log=lambda m: None)
    r.run(analyses=False, report=False)
    return r


@pytest.fixture
def two_copies(tiny_study, tmp_path, monkeypatch):
    """The same arm trained twice (same rank, same seed), evaluated on two sampling streams;
    returns a function of the number of prompts kept -> decisions of copy b against copy a."""
    runs = [_run(tiny_study, tmp_path, name, s, monkeypatch) for name, s in (("a", 0), ("b", 1))]
    a, b = (pd.read_parquet(r.rd.eval_paths("lora-r2", 0, "toxicity")[1]) for r in runs)
    task, ctx = runs[0].task, runs[0].ctx

    def decide(n_prompts: int) -> dict:
        keep = list(dict.fromkeys(a["prompt_id"]))[:n_prompts]
        pick = {("full", 0): a[a["prompt_id"].isin(keep)], ("lora-r2", 0): b[b["prompt_id"].isin(keep)]}
        cmp = task.compare(ctx, pick)
        return equivalence.decide_all(cmp.minus_full, task.default_margins())["lora-r2"]

    return decide


def test_identical_arms_are_equivalent_or_inconclusive(two_copies):
    many = two_copies(200)
    for m in ("mean_score", "expected_max_toxicity", "toxic_fraction"):
        if many[m]["decision"] == "uninformative (floor)":  # too few toxic continuations in both copies
            assert m == "toxic_fraction" and max(many[m]["events"]["arm"], many[m]["events"]["full"]) < 5
            continue
        assert many[m]["decision"] == "equivalent", (m, many[m])
    few = two_copies(3)
    assert few["mean_score"]["decision"] == "inconclusive", few["mean_score"]
    assert few["mean_score"]["lo"] < 0 < few["mean_score"]["hi"]
