"""`lorafair analyze` on a finished study of the tiny model: every analysis result is written for
every arm, and the analyses time themselves against one forward pass per arm."""

from __future__ import annotations

import math

from typer.testing import CliRunner

from lorafair.cli import app
from lorafair.study.config import study_from_dict
from lorafair.study.runner import Runner
from lorafair.store.rundir import read_json

from conftest import tiny_study_dict, write_corpus, write_yaml


def test_analyze_writes_every_quantity_for_every_arm(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    d = tiny_study_dict(tmp_path / "run", corpus, arms=["base", "full", {"type": "lora", "ranks": [1, 4]}],
                        analyses={"kl": True, "lens": True, "weights": True, "n_sequences": 4, "batch_size": 2})
    write_yaml(tmp_path / "study.yaml", d)
    Runner(study_from_dict(d, "study.yaml"), log=lambda m: None).run(analyses=False, report=False)
    out = tmp_path / "run"
    assert not (out / "analysis").exists()

    r = CliRunner().invoke(app, ["analyze", str(out)])
    assert r.exit_code == 0, r.output
    lora = ["lora-r1", "lora-r4"]

    kl = read_json(out / "analysis" / "kl.json")
    for arm in ["full", *lora]:
        a = kl["arms"][arm]
        for key in ("kl_arm_base", "kl_base_arm", "kl_full_arm", "kl_arm_full"):
            assert {"mean", "median", "p90"} <= set(a[key]), (arm, key)
        assert math.isfinite(a["kl_arm_base"]["mean"]) and a["kl_arm_base"]["mean"] >= 0
    for arm in lora:
        sc = kl["arms"][arm]["shift_captured"]
        assert sc["lo"] <= sc["value"] <= sc["hi"]
    assert set(kl["sets"]) == {"heldout", "prompts"}

    lens = read_json(out / "analysis" / "lens.json")
    assert set(lens["top_tokens"]) == {"base", "full", *lora}

    w = read_json(out / "analysis" / "weights.json")
    assert set(w["arms"]) == set(lora)
    for arm in lora:
        assert 0.0 <= w["arms"][arm]["col_overlap"] <= 1.0 + 1e-9
    rec = w["recommendation"]
    assert rec["ranks_tried"] == [1, 4] and "rank_from_spectrum" in rec and "rank_measured" in rec

    t = read_json(out / "analysis" / "timings.json")
    assert t["n_arms"] == 4 and t["forward_pass_s"] > 0
    assert set(t["relative_to_forward"]) == {"kl", "lens", "weights"}
    for k, v in t["relative_to_forward"].items():
        assert v == t["seconds"][k] / (t["forward_pass_s"] * 4)


def test_an_analysis_turned_off_in_the_study_does_not_run(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    d = tiny_study_dict(tmp_path / "run", corpus, arms=["base", {"type": "lora", "rank": 1}],
                        analyses={"kl": False, "lens": True, "weights": False, "n_sequences": 2, "batch_size": 2})
    Runner(study_from_dict(d, "study.yaml"), log=lambda m: None).run(analyses=True, report=False)
    out = tmp_path / "run" / "analysis"
    assert not (out / "kl.json").exists() and not (out / "kl_tokens.parquet").exists()
    assert (out / "lens.json").is_file() and not (out / "weights.json").exists()
    assert set(read_json(out / "timings.json")["seconds"]) == {"lens"}
