"""The counterfactual divergence inside a run: per arm × seed, pooled, cached, reported."""

import pytest

from lorafair.store import rundir as store
from lorafair.study.config import study_from_dict
from lorafair.errors import UserError
from lorafair.study.runner import Runner


def _study(tiny_study, **cf):
    return tiny_study(evaluation={"counterfactual": {"enabled": True, "positions": 3,
                                                     "prompts": "identity-religion", **cf},
                                  "probes": ["bbq"], "n_probe_items": 8},
                      seeds=[0, 1])


def test_divergence_per_arm_pooled_and_cached(tiny_study):
    study = study_from_dict(_study(tiny_study))
    runner = Runner(study, log=lambda _: None)
    runner.run(analyses=False, report=True)
    rd = runner.rd
    for arm, seed in [("base", 0), ("full", 0), ("full", 1), ("lora-r2", 1)]:
        summary, rows = rd.read_eval(arm, seed, "counterfactual")
        js = summary["metrics"]["cf_js"]
        assert js["lo"] <= js["value"] <= js["hi"] and js["value"] > 0
        assert summary["n_templates"] == 18 and len(summary["by_layer"]) == 2
        assert set(rows["layer"]) == {-1, 0, 1}
    pooled = store.read_json(rd.analysis_path("counterfactual"))
    lora = pooled["arms"]["lora-r2"]
    assert lora["js"]["n_seeds"] == 2 and lora["js"]["n_units"] == 18
    assert lora["minus_full"] is not None and lora["reduction_share"] is not None
    assert pooled["arms"]["full"]["minus_full"] is None
    d = {s: rd.read_eval("full", s, "counterfactual")[0]["metrics"]["cf_js"]["value"] for s in (0, 1)}
    assert pooled["arms"]["full"]["noise_floor"]["value"] == pytest.approx(abs(d[0] - d[1]), rel=1e-6)
    decided = pooled["decisions"]["lora-r2"]["cf_js"]
    assert decided["decision"] in {"equivalent", "better", "worse", "inconclusive"}
    assert decided["value"] == pytest.approx(lora["minus_full"]["value"]) and "full" not in pooled["decisions"]
    assert {r["arm"] for r in pooled["by_layer"]} == {"base", "full", "lora-r2"}
    report = (rd.path / "report" / "report.html").read_text()
    assert "Counterfactual divergence" in report and "<h3>BBQ</h3>" in report
    for png in ("counterfactual-cf_js-vs-rank.png", "cf-js-layers.png"):
        assert (rd.path / "report" / png).is_file()
    # a second run computes nothing again
    before = rd.eval_paths("full", 1, "counterfactual")[0].stat().st_mtime_ns
    Runner(study, log=lambda _: None).run(analyses=False, report=False)
    assert rd.eval_paths("full", 1, "counterfactual")[0].stat().st_mtime_ns == before
    # a margin wider than any JS difference (JS <= ln 2) decides every arm equivalent, from the same files
    wide = _study(tiny_study)
    wide["evaluation"]["margins"] = {"cf_js": 1.0}
    Runner(study_from_dict(wide), log=lambda _: None).run(analyses=False, report=False)
    pooled = store.read_json(rd.analysis_path("counterfactual"))
    assert pooled["margins"] == {"cf_js": 1.0}
    assert {d["cf_js"]["decision"] for d in pooled["decisions"].values()} == {"equivalent"}
    assert rd.eval_paths("full", 1, "counterfactual")[0].stat().st_mtime_ns == before


def test_divergence_decided_with_the_task_metrics_and_primary(tiny_study):
    d = _study(tiny_study)
    d["evaluation"]["primary"] = ["mean_score", "cf_js"]
    runner = Runner(study_from_dict(d), log=lambda _: None)
    runner.run(analyses=False, report=True)
    rd = runner.rd
    cmp, pooled = store.read_json(rd.compare_path()), store.read_json(rd.analysis_path("counterfactual"))
    got = cmp["decisions"]["lora-r2"]["cf_js"]
    assert got["primary"] and got["margin"] == 0.005 and cmp["margins"]["cf_js"] == 0.005
    assert got["value"] == pytest.approx(pooled["arms"]["lora-r2"]["minus_full"]["value"])
    assert cmp["minus_full"]["lora-r2"]["cf_js"]["higher_is_better"] is False
    assert cmp["pooled"]["base"]["cf_js"]["value"] == pytest.approx(pooled["arms"]["base"]["js"]["value"])
    assert cmp["decisions"]["base"]["cf_js"]["p_holm"] is None  # base − full stays out of the family
    # Holm over the family of the one judged arm's two primary metrics, by hand
    p = {m: cmp["decisions"]["lora-r2"][m]["p_value"] for m in ("mean_score", "cf_js")}
    small, large = sorted(p, key=p.get)
    assert cmp["decisions"]["lora-r2"][small]["p_holm"] == pytest.approx(min(1.0, 2 * p[small]))
    assert cmp["decisions"]["lora-r2"][large]["p_holm"] == pytest.approx(max(min(1.0, 2 * p[small]), p[large]))
    # the decisions table and the report show compare.json's decision
    import pandas as pd
    table = pd.read_parquet(rd.table_path("decisions"))
    row = table[(table["arm"] == "lora-r2") & (table["metric"] == "cf_js")]
    assert len(row) == 1 and row["decision"].iloc[0] == got["decision"]
    from lorafair.report.load import load_run
    assert load_run(rd.path).cf_decisions["lora-r2"] == got
    # rebuilt from the stored files alone, the same decision
    from lorafair.study.decide import recompare
    assert recompare(rd.path, log=lambda _: None)["decisions"]["lora-r2"]["cf_js"] == got
    # the same folder compared for a study without the divergence: its stale analysis is not read
    Runner(study_from_dict(tiny_study(seeds=[0, 1])), log=lambda _: None).run(analyses=False, report=False)
    assert all("cf_js" not in ms for ms in store.read_json(rd.compare_path())["decisions"].values())


def test_bad_settings_are_user_errors(tiny_study):
    with pytest.raises(UserError, match="counterfactual.positions"):
        study_from_dict(_study(tiny_study, positions=0))
    with pytest.raises(UserError, match="counterfactual.prompts"):
        study_from_dict(_study(tiny_study, prompts="rtp-toxic"))
