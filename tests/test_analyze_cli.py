"""`lorafair analyze` on a finished study of the tiny model: every analysis result is written for
every arm, and the analyses time themselves against one forward pass per arm."""

from __future__ import annotations

import math

import pytest

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
            assert {"mean", "lo", "hi", "n_seeds"} <= set(a[key]), (arm, key)
            # one seed: the pooled token-weighted mean is that seed's mean over tokens
            assert a[key]["mean"] == pytest.approx(kl["seeds"]["0"]["heldout"]["arms"][arm][key]["mean"], rel=1e-6)
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


def test_kl_is_pooled_over_seeds_beside_the_noise_floor(tmp_path):
    """Two seeds: each seed's arms are compared with that seed's full, the pooled value is the
    token-weighted mean over both seeds, and the floor is KL between the two seeds of full."""
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    d = tiny_study_dict(tmp_path / "run", corpus, seeds=[0, 1],
                        analyses={"kl": True, "lens": False, "weights": False, "n_sequences": 4, "batch_size": 2})
    write_yaml(tmp_path / "study.yaml", d)
    Runner(study_from_dict(d, "study.yaml"), log=lambda m: None).run(analyses=False, report=False)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["analyze", str(out)])
    assert r.exit_code == 0, r.output
    kl = read_json(out / "analysis" / "kl.json")
    assert kl["n_seeds"] == 2 and set(kl["seeds"]) == {"0", "1"}
    per = {s: kl["seeds"][s]["heldout"]["arms"] for s in ("0", "1")}
    n = {s: kl["seeds"][s]["heldout"]["n_tokens"] for s in ("0", "1")}
    floor = kl["floor_arm"]
    for arm in ("base", "lora-r2"):
        hand = sum(per[s][arm]["kl_full_arm"]["mean"] * n[s] for s in n) / sum(n.values())
        assert kl["arms"][arm]["kl_full_arm"]["mean"] == pytest.approx(hand, rel=1e-6)
        assert kl["arms"][arm]["kl_full_arm"]["n_seeds"] == 2
    # each seed's own full is its reference: KL(full || full) is 0 on every seed
    assert all(per[s]["full"]["kl_full_arm"]["mean"] == pytest.approx(0.0, abs=1e-6) for s in per)
    # the floor: seed 0 against full of seed 1 and back, both positive (the two runs differ)
    assert per["0"][floor]["kl_full_arm"]["mean"] > 0 and per["1"][floor]["kl_full_arm"]["mean"] > 0
    nf = kl["noise_floor"]
    assert nf["seeds"] == [0, 1]
    hand = sum(per[s][floor]["kl_full_arm"]["mean"] * n[s] for s in n) / sum(n.values())
    assert nf["kl_full_arm"]["mean"] == pytest.approx(hand, rel=1e-6)
    bf = kl["arms"]["lora-r2"]["beyond_floor"]
    assert bf["value"] == pytest.approx(kl["arms"]["lora-r2"]["kl_full_arm"]["mean"] - nf["kl_full_arm"]["mean"],
                                        rel=1e-6, abs=1e-12)
    assert bf["word"].endswith("another seed of full")
    assert floor not in kl["arms"]
    assert bf["floor"] == pytest.approx(nf["kl_full_arm"]["mean"])  # same seeds: the floor itself
    r = CliRunner().invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    summary = (out / "report" / "summary.md").read_text()
    assert "another seed of full: KL" in summary and bf["word"] in summary


def test_an_analysis_turned_off_in_the_study_does_not_run(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    d = tiny_study_dict(tmp_path / "run", corpus, arms=["base", {"type": "lora", "rank": 1}],
                        analyses={"kl": False, "lens": True, "weights": False, "n_sequences": 2, "batch_size": 2})
    Runner(study_from_dict(d, "study.yaml"), log=lambda m: None).run(analyses=True, report=False)
    out = tmp_path / "run" / "analysis"
    assert not (out / "kl.json").exists() and not (out / "kl_tokens.parquet").exists()
    assert (out / "lens.json").is_file() and not (out / "weights.json").exists()
    assert set(read_json(out / "timings.json")["seconds"]) == {"lens"}
