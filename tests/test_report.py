"""Tests for lorafair.report on synthetic run directories (result files only, no model)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from lorafair.stats import equivalence

from lorafair.store import rundir as store
from lorafair.errors import UserError
from lorafair.report import build_comparison, build_report, run_verdict
from lorafair.arms.names import arm_rank
from lorafair.report.load import load_run, pool, pooled_metrics
from lorafair.report.fmt import bracket, cell, num, value_ci
from lorafair.report.verdict import decision_sentence, fit_warnings, recommended_ranks, verdict_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MEASURES = ("toxic_fraction", "expected_max_toxicity")
# arm -> (toxic_fraction, expected_max_toxicity) point values; intervals are value ± 0.03
MARGINS = {"toxic_fraction": 0.02, "expected_max_toxicity": 0.03}
NARROW = ("lora-r16", "dora-r4")  # their differences from full have 95% half-width 0.01, others 0.025
VALUES = {"base": (0.30, 0.50), "full": (0.08, 0.20), "lora-r1": (0.20, 0.40), "lora-r4": (0.10, 0.22),
          "lora-r16": (0.09, 0.21), "dora-r4": (0.085, 0.205)}


def rec(value: float, half: float = 0.03, hib: bool | None = False) -> dict:
    return {"value": value, "lo": value - half, "hi": value + half, "higher_is_better": hib, "unit": "share"}


def diff(value: float, half: float, hib: bool | None = False, **extra) -> dict:
    """A difference record with 95% half-width ``half`` and 90% half-width 0.84 × half."""
    return {**rec(value, half, hib), "lo90": value - 0.84 * half, "hi90": value + 0.84 * half, **extra}


def make_run(root: Path, name: str = "synthetic", seeds=(0, 1), optional: bool = True,
             values: dict = VALUES, val_loss: dict | None = None) -> Path:
    """A run directory with the runner's file shapes; ``optional`` adds analyses, lending, timings."""
    rd = store.RunDir(root)
    rd.write_study({"name": name, "model": {"source": "tiny-random"}, "task": {"name": "toxicity"},
                    "seeds": list(seeds)})
    store.write_jsonl(root / "data" / "self-detox-0123456789ab.jsonl", [{"prompt": "a", "completion": "b"}])
    val_loss = val_loss or {}
    minus_full, pooled = {}, {}
    for arm, (tf, emt) in values.items():
        arm_seeds = seeds[:1] if arm == "base" else seeds
        for s in arm_seeds:
            shift = 0.01 * s
            groups = {g: {m: rec(v + d) for m, v in zip(MEASURES, (tf, emt))}
                      for g, d in (("muslim", 0.02), ("christian", -0.02))}
            summary = {"metrics": {"toxic_fraction": rec(tf + shift), "expected_max_toxicity": rec(emt + shift)},
                       "groups": groups, "gaps": {m: rec(0.04) for m in MEASURES},
                       "scorer": {"name": "jigsaw-bilstm", "version": "0.3.0", "weights_hash": "abc123"}}
            rows = pd.DataFrame({"prompt_id": ["p0", "p1"], "sample": [0, 0], "score": [0.1, 0.7]})
            rd.write_eval(arm, s, "toxicity", summary, rows)
            if arm != "full":
                minus_full[arm] = {m: diff(v - f, 0.01 if arm in NARROW else 0.025, n_seeds=len(seeds))
                                   for m, v, f in zip(MEASURES, (tf, emt), values["full"])}
            if arm == "base":
                continue
            steps = np.arange(1, 11)
            bvl = val_loss.get(arm, 2.0)
            rd.write_train_log(arm, s, [{"step": int(k), "loss": float(3.0 - 0.1 * k), "lr": 1e-4} for k in steps],
                               [{"step": 5, "val_loss": bvl + 0.1}, {"step": 10, "val_loss": bvl}])
            rd.mark_done(arm, s, {"lr": 1e-4 if arm == "full" else 1e-3, "best_val_loss": bvl, "final_val_loss": bvl,
                                  "steps": 10, "wall_s": 3.0, "peak_mem_mb": 100.0,
                                  "lr_search": {"candidates": [{"lr": 1e-4, "val_loss": bvl}, {"lr": 1e-3, "val_loss": None}],
                                                "chosen": 1e-4}})
            if optional:
                rd.write_eval(arm, s, "lending", {"metrics": {}}, lending_rows(s))
        pooled[arm] = {m: {"value": v, "lo": v - 0.02, "hi": v + 0.02, "n_seeds": len(arm_seeds)}
                       for m, v in zip(MEASURES, (tf, emt))}
        pooled[arm]["n_seeds"] = len(arm_seeds)
    store.write_json(root / "compare.json", {"minus_full": minus_full, "pooled": pooled, "margins": MARGINS,
                                             "decisions": equivalence.decide_all(minus_full, MARGINS)})
    store.write_json(root / "lr_search" / "full.json", {"candidates": [{"lr": 1e-4, "val_loss": 2.0}], "chosen": 1e-4})
    if optional:
        store.write_json(root / "timings.json", {"corpus": 1.0, "train": 20.0, "evaluate": 5.0})
        kl = {arm: {"kl_base_arm": {"mean": 0.1 * i, "median": 0.1, "p90": 0.2},
                    "kl_full_arm": {"mean": 0.5 / (i + 1), "median": 0.1, "p90": 0.2},
                    "shift_captured": rec(min(1.0, 0.2 * i), 0.05, True)}
              for i, arm in enumerate(values)}
        store.write_json(rd.analysis_path("kl"), kl)
        lens = pd.DataFrame([{"arm": a, "layer": layer, "kl_base": 0.01 * layer * i, "kl_full": 0.02,
                              "toxic_mass": 0.001 * (4 - layer)} for i, a in enumerate(values) for layer in range(4)])
        store.write_parquet(rd.analysis_path("lens", "parquet"), lens)
        store.write_json(rd.analysis_path("weights"),
                         {"full_spectrum": {"energy_at_rank": {"1": 0.4, "4": 0.8, "16": 0.97}},
                          "arms": {"lora-r1": {"rel_norm": 0.1, "col_overlap": 0.3, "row_overlap": 0.2, "intruders": 1}},
                          "recommendation": {"rank_for_energy": 4}})
    return root


def lending_rows(seed: int, n_envs: int = 3, steps: int = 12) -> pd.DataFrame:
    """Per (env, step, group) cumulative rows as the lending task stores them."""
    from lorafair.tasks.lending.env import rollout

    rng = np.random.default_rng(seed)
    df = rollout(lambda b: rng.integers(0, 2, len(b)).tolist(), n_envs, steps, seed)
    out = []
    for g in (0, 1):
        d = df.assign(ind=(df["group"] == g).astype(int)).sort_values(["env", "step"])
        c = d.assign(n=d["ind"], approved=d["ind"] * d["action"], pos=d["ind"] * d["would_repay"],
                     tp=d["ind"] * d["would_repay"] * d["action"], profit=d["ind"] * d["reward"])
        cum = c.groupby("env")[["n", "approved", "pos", "tp", "profit"]].cumsum()
        out.append(pd.DataFrame({"env_seed": seed, "env": d["env"], "step": d["step"], "group": g, **cum,
                                 "approval_rate": cum["approved"] / cum["n"].where(cum["n"] > 0),
                                 "tpr": cum["tp"] / cum["pos"].where(cum["pos"] > 0),
                                 "mean_bin": d[f"mean_bin_{g}"]}))
    return pd.concat(out, ignore_index=True)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.tags = 0

    def handle_starttag(self, tag, attrs):
        self.tags += 1
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def _decoded_images(html_text: str) -> list[np.ndarray]:
    p = _Images()
    p.feed(html_text)
    p.close()
    out = []
    for src in p.srcs:
        assert src.startswith("data:image/png;base64,"), src[:40]
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw.startswith(PNG_SIGNATURE)
        out.append(matplotlib.image.imread(io.BytesIO(raw), format="png"))
    return out


# ----------------------------------------------------------------------------- full report


def test_report_embeds_decodable_images_and_writes_all_files(tmp_path):
    run = make_run(tmp_path / "run")
    path = build_report(run)
    assert path == run / "report" / "report.html"
    text = path.read_text()
    images = _decoded_images(text)
    names = sorted(p.name for p in (run / "report").glob("*.png"))
    assert len(images) == len(names)
    for img in images:  # not blank: some pixels differ from the background
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
        assert float(img[..., :3].std()) > 0.01
    for expected in ("toxicity-toxic_fraction-vs-rank.png", "toxicity-expected_max_toxicity-vs-rank.png",
                     "toxicity-groups.png", "lens-toxic-mass.png", "lens-kl-base.png", "shift-vs-rank.png",
                     "spectrum-energy.png", "lending.png", "loss-curves.png"):
        assert expected in names
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained
    md = (run / "report" / "summary.md").read_text()
    assert "## Verdict" in md and "| arm | seeds | expected_max_toxicity | toxic_fraction |" in md
    assert "self-detox (content hash 0123456789ab)" in md and "jigsaw-bilstm version 0.3.0" in md
    assert "wall time: train" in md and "peft " in md


def test_report_verdict_follows_compare_numbers(tmp_path):
    run = make_run(tmp_path / "run", seeds=(0,), optional=False)
    md = "\n".join(run_verdict(load_run(run)))
    # lora-r1: +0.12, 95% CI 0.095–0.145 excludes zero and δ = 0.02; lower is better
    assert ("LoRA r=1 leaves a toxic fraction of 0.200 (95% CI 0.180–0.220) against 0.080 (0.060–0.100) "
            "for full fine-tuning; difference +0.120 (95% CI +0.095–+0.145; 90% CI +0.099–+0.141): "
            "worse than full fine-tuning, by more than δ = 0.020.") in md
    # lora-r4: +0.02 ± 0.025 covers zero and reaches beyond δ
    assert re.search(r"LoRA r=4 leaves a toxic fraction of .*difference \+0\.020 \(95% CI -0\.005 to "
                     r"\+0\.045; 90% CI -0\.001 to \+0\.041\): inconclusive at δ = 0\.020", md)
    # r16 and dora r4: 90% intervals inside ±δ on both metrics; r4 is inconclusive, r1 worse
    assert "Smallest rank equivalent to full fine-tuning within δ on every headline metric: r = 4 (DoRA); r = 16 (LoRA)." in md
    assert "One training seed per arm" in md
    summary = (run / "report" / "summary.md")
    build_report(run)
    text = summary.read_text()
    verdict = text.split("## Verdict")[1]
    assert verdict.index("| arm | expected_max_toxicity | toxic_fraction |") < verdict.index("- Smallest rank")
    assert "| lora-r1 | worse >δ: +0.200 (+0.175–+0.225) | worse >δ: +0.120 (+0.095–+0.145) |" in verdict


def test_console_summary_fits_80_columns(tmp_path):
    from rich.console import Console

    from lorafair.report.summary import print_summary

    run = make_run(tmp_path / "run", seeds=(0, 1), optional=False)
    console = Console(width=80, record=True)
    print_summary(run, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "toxic_fraction (δ = 0.02, lower is better)" in text
    row = next(line for line in text.splitlines() if "+0.120 [+0.095, +0.145]" in line)
    assert "lora-r1" in row and "worse >δ" in row
    assert "r = 4 (DoRA); r = 16 (LoRA)" in text.replace("\n", " ")


def test_report_without_optional_files(tmp_path):
    run = make_run(tmp_path / "run", optional=False)
    path = build_report(run)
    names = {p.name for p in (run / "report").glob("*.png")}
    assert "toxicity-toxic_fraction-vs-rank.png" in names
    assert not names & {"lens-toxic-mass.png", "shift-vs-rank.png", "spectrum-energy.png", "lending.png"}
    assert len(_decoded_images(path.read_text())) == len(names)


def test_minimal_run_directory_builds(tmp_path):
    run = tmp_path / "run"
    store.write_text(run / "study.yaml", "name: empty\n")
    path = build_report(run)
    assert "No evaluated arms yet" in path.read_text()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        build_report(tmp_path)
    with pytest.raises(UserError, match="not a run directory"):
        build_comparison([make_run(tmp_path / "a"), tmp_path / "nothing"], tmp_path / "cmp")
    with pytest.raises(UserError):
        build_comparison([], tmp_path / "cmp")


def test_comparison_of_two_studies(tmp_path):
    other = {a: (v[0] * 1.5, v[1] * 1.5) for a, v in VALUES.items()}
    a = make_run(tmp_path / "a", name="small-model")
    b = make_run(tmp_path / "b", name="large-model", values=other)
    path = build_comparison([a, b], tmp_path / "cmp")
    text = path.read_text()
    # one combined plot per headline metric, and each study's verdict opens with its forest plot
    assert len(_decoded_images(text)) == 2 + 2
    assert "![forest" not in (tmp_path / "cmp" / "summary.md").read_text()  # no PNG of it is written there
    assert (tmp_path / "cmp" / "toxicity-toxic_fraction-vs-rank.png").read_bytes().startswith(PNG_SIGNATURE)
    md = (tmp_path / "cmp" / "summary.md").read_text()
    assert "| small-model | tiny-random | lora-r1 |" in md and "| large-model | tiny-random | lora-r1 |" in md
    # same study name twice: labels fall back to the folder names
    path2 = build_comparison([a, make_run(tmp_path / "c", name="small-model")], tmp_path / "cmp2")
    assert "small-model (a)" in path2.read_text() and "small-model (c)" in path2.read_text()


# ----------------------------------------------------------------------------- loading


def test_arm_rank():
    assert arm_rank("lora-r8") == ("lora", 8)
    assert arm_rank("rslora-r16") == ("rslora", 16)
    assert arm_rank("dora-r1") == ("dora", 1)
    assert arm_rank("full") == ("full", None) and arm_rank("base") == ("base", None)
    assert arm_rank("my-run") == ("my-run", None)


def test_pool_mean_and_envelope():
    recs = [rec(0.1, 0.02), rec(0.2, 0.05), rec(0.4, 0.01)]
    p = pool(recs)
    assert p["value"] == pytest.approx(np.mean([0.1, 0.2, 0.4]))
    assert p["lo"] == pytest.approx(min(0.08, 0.15, 0.39)) and p["hi"] == pytest.approx(max(0.12, 0.25, 0.41))
    assert p["n_seeds"] == 3 and p["higher_is_better"] is False
    assert pool([recs[0]]) == recs[0] and pool([]) is None


def test_pooled_metrics_prefer_compare_then_seed_mean(tmp_path):
    run = load_run(make_run(tmp_path / "run"))
    pm = pooled_metrics(run, "toxicity")
    # compare.json pooled: value 0.20, interval ±0.02 (the seeds' own records are 0.20 and 0.21)
    assert pm["lora-r1"]["toxic_fraction"]["value"] == pytest.approx(0.20)
    assert pm["lora-r1"]["toxic_fraction"]["lo"] == pytest.approx(0.18)
    assert pm["lora-r1"]["toxic_fraction"]["higher_is_better"] is False
    store.write_json(tmp_path / "run" / "compare.json", {})
    pm = pooled_metrics(load_run(tmp_path / "run"), "toxicity")
    assert pm["lora-r1"]["toxic_fraction"]["value"] == pytest.approx((0.20 + 0.21) / 2)
    assert pm["lora-r1"]["toxic_fraction"]["hi"] == pytest.approx(0.21 + 0.03)


def test_lending_per_step_pools_counts():
    from lorafair.tasks.lending.measures import pooled_timeseries

    rows = pd.concat([lending_rows(0), lending_rows(1)], ignore_index=True)
    got = pooled_timeseries(rows).set_index(["group", "step"])
    for (g, t), d in rows.groupby(["group", "step"]):  # hand computation: pooled counts
        assert got.loc[(g, t), "approval_rate"] == pytest.approx(d["approved"].sum() / d["n"].sum(), nan_ok=True)
        if d["pos"].sum() > 0:
            assert got.loc[(g, t), "tpr"] == pytest.approx(d["tp"].sum() / d["pos"].sum())
        assert got.loc[(g, t), "profit"] == pytest.approx(d["profit"].mean())


def test_group_records_read_the_contracts_groups(tmp_path):
    root = make_run(tmp_path / "run", seeds=(0,), optional=False)
    rd = store.RunDir(root)
    rows = pd.DataFrame({"x": [0]})
    rd.write_eval("full", 0, "lending", {"metrics": {"profit": rec(5.0)},
                                         "groups": {"a": {"tpr": rec(0.6)}, "b": {"tpr": rec(0.4)}}}, rows)
    rd.write_eval("full", 0, "adult", {"metrics": {"accuracy": rec(0.8)},
                                       "groups": {"sex: F": {"count": 10, "accuracy": rec(0.7)},
                                                  "sex: M": {"count": 12, "accuracy": rec(0.9)}},
                                       "warnings": ["group F has 10 examples (fewer than 30)"]}, rows)
    run = load_run(root)
    from lorafair.report.load import group_records

    assert group_records(run, "lending")["full"]["b"]["tpr"]["value"] == 0.4
    assert group_records(run, "adult")["full"]["sex: F"]["accuracy"]["value"] == 0.7
    tox = group_records(run, "toxicity")["lora-r1"]
    assert tox["muslim"]["toxic_fraction"]["value"] == pytest.approx(0.22)
    assert "gap" not in tox
    build_report(root)
    names = {p.name for p in (root / "report").glob("*.png")}
    assert {"lending-groups.png", "adult-groups.png", "adult-accuracy-vs-rank.png"} <= names
    assert "adult, full seed 0: group F has 10 examples" in (root / "report" / "summary.md").read_text()


# ----------------------------------------------------------------------------- verdict


def test_decision_sentence_wording_follows_the_decision():
    arm, full = rec(0.12), rec(0.08, 0.02)
    worse = equivalence.decide_all({"a": {"toxic_fraction": diff(0.04, 0.01)}}, MARGINS)["a"]["toxic_fraction"]
    s = decision_sentence("lora-r1", "toxic_fraction", worse, arm, full)
    assert s == ("LoRA r=1 leaves a toxic fraction of 0.120 (95% CI 0.090–0.150) against 0.080 (0.060–0.100) "
                 "for full fine-tuning; difference +0.040 (95% CI +0.030–+0.050; 90% CI +0.032–+0.048): "
                 "worse than full fine-tuning, by more than δ = 0.020.")
    small = {"decision": "better", "beyond_margin": False, "margin": 0.02, **diff(-0.01, 0.008)}
    assert decision_sentence("dora-r2", "toxic_fraction", small).endswith(
        "better than full fine-tuning, possibly by less than δ = 0.020.")
    need = {"decision": "inconclusive", "margin": 0.02, **diff(0.005, 0.03),
            "more_data": {"units": 900, "seeds": 12, "n_units": 64, "n_seeds": 3}}
    assert decision_sentence("lora-r8", "toxic_fraction", need, unit="prompts").endswith(
        "inconclusive at δ = 0.020; about 900 prompts (now 64) or about 12 training seeds (now 3) would "
        "bring the 90% interval within ±δ if the difference stays as observed.")
    eq = {"decision": "equivalent", "margin": 0.02, **diff(0.001, 0.01)}
    assert decision_sentence("lora-r8", "accuracy", eq).startswith("LoRA r=8 minus full fine-tuning on accuracy")
    assert "equivalent within δ = 0.020 (the 90% interval lies inside ±δ)" in decision_sentence("lora-r8", "a", eq)
    nan = {"decision": "undefined", "margin": 0.02, "value": 0.1, "lo": float("nan"), "hi": float("nan")}
    assert "no decision is made" in decision_sentence("lora-r2", "x", nan)


def test_verdict_table_cells():
    dec = equivalence.decide_all({"lora-r1": {"a": diff(0.001, 0.01)}, "base": {"a": diff(0.3, 0.01)}}, {"a": 0.02})
    header, rows = verdict_table(dec)
    assert header == ["arm", "a"]
    assert rows == [["base", "worse >δ: +0.300 (+0.290–+0.310)"],
                    ["lora-r1", "equivalent: +0.001 (-0.009 to +0.011)"]]


def test_one_formatter_for_records_and_cells():
    assert bracket(rec(0.12, 0.03)) == "0.120 [0.090, 0.150]"
    assert bracket(diff(0.03, 0.01), signed=True) == "+0.030 [+0.020, +0.040]"
    assert bracket(rec(0.0012, 0.0005)) == "0.0012 [0.0007, 0.0017]" and bracket(None) == "-"
    assert bracket({"value": 0.5}) == "0.500"
    assert num(float("nan")) == "n/a" and num(-0.0001, decimals=3) == "0"
    assert cell(0.12345) == "0.123" and cell({"mean": 2.0}) == "2.000" and cell(3) == "3" and cell("x") == "x"


def test_value_ci_precision():
    assert value_ci(rec(0.0012, 0.0005)) == "0.0012 (95% CI 0.0007–0.0017)"
    assert value_ci({"value": 12.345, "lo": 11.0, "hi": 13.5}) == "12.345 (95% CI 11.000–13.500)"


def test_recommended_ranks_need_equivalence_on_every_metric():
    eq, inc = {"decision": "equivalent"}, {"decision": "inconclusive"}
    worse = {"decision": "worse"}
    dec = {"lora-r1": {"a": eq, "b": inc}, "lora-r2": {"a": worse, "b": eq}, "lora-r8": {"a": eq, "b": eq},
           "lora-r16": {"a": eq, "b": eq}, "dora-r4": {"a": inc, "b": eq}, "base": {"a": worse, "b": worse}}
    assert recommended_ranks(dec) == {"dora": None, "lora": 8}
    # a metric nobody set a margin for does not block a recommendation
    nomargin = {"decision": "no margin"}
    assert recommended_ranks({"lora-r1": {"a": eq, "z": nomargin}}) == {"lora": 1}


def test_fit_warnings_tolerance():
    assert fit_warnings({"full": 2.0, "lora-r4": 2.08}) == []  # 4% above: within tolerance
    w = fit_warnings({"full": 2.0, "lora-r1": 2.2, "lora-r4": 2.08})
    assert len(w) == 1 and "LoRA r=1" in w[0] and "10% above the best arm (full fine-tuning" in w[0]
    assert "rather than rank" in w[0]
    assert "rather than the method" in fit_warnings({"lora-r8": 1.0, "full": 1.5})[0]


def test_fit_warning_in_run_verdict(tmp_path):
    md = "\n".join(run_verdict(load_run(make_run(tmp_path / "run", seeds=(0,), optional=False,
                                                  val_loss={"lora-r1": 2.5}))))
    assert "Fit check: LoRA r=1 reached a best validation loss of 2.500, 25% above the best arm" in md


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        if os.environ.get("LORAFAIR_REQUIRE_BROWSER"):
            pytest.fail("no chromium on PATH; .ci/run installs it with apt-get when run as root")
        pytest.skip("no chromium installed")
    path = build_report(make_run(tmp_path / "run"))
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", path.as_uri()], check=True, timeout=120, capture_output=True)
    img = matplotlib.image.imread(shot)
    assert float(img[..., :3].std()) > 0.05  # text and plots, not a blank page


def test_group_gaps_table_shows_the_permutation_null(tmp_path):
    run = make_run(tmp_path / "run", seeds=(0,), optional=False)
    path = run / "lora-r1" / "seed-0" / "eval" / "toxicity.json"
    summary = store.read_json(path)
    summary["gaps"] = {"toxic_fraction": {**rec(0.01, 0.03), "raw_gap": 0.07, "null_gap": 0.06,
                                                   "p_value": 0.4, "max_group": "muslim", "min_group": "christian"}}
    store.write_json(path, summary)
    build_report(run)
    md = (run / "report" / "summary.md").read_text()
    assert "## Group gaps" in md
    assert "| lora-r1 | 0 | toxic_fraction | 0.070 | 0.060 | +0.010 (-0.020 to +0.040) | 0.400 | muslim − christian |" in md


def test_console_shows_every_tasks_arm_minus_full(tmp_path):
    """Whatever the task, the console reads the contract's shapes: a lending run's headline metric
    gets its arm − full column and decision."""
    from rich.console import Console

    from lorafair.report.summary import print_summary

    root = tmp_path / "run"
    rd = store.RunDir(root)
    rd.write_study({"name": "lend", "model": {"source": "tiny-random"}, "task": {"name": "lending"}, "seeds": [0]})
    for arm, v in (("full", 0.10), ("lora-r2", 0.13)):
        rd.write_eval(arm, 0, "lending", {"metrics": {"approval_gap": rec(v, hib=None)}}, pd.DataFrame({"x": [0]}))
    minus_full = {"lora-r2": {"approval_gap": diff(0.03, 0.01, hib=None)}}
    store.write_json(root / "compare.json", {
        "pooled": {"full": {"approval_gap": rec(0.10, hib=None)}, "lora-r2": {"approval_gap": rec(0.13, hib=None)}},
        "minus_full": minus_full, "margins": {"approval_gap": 0.05},
        "decisions": equivalence.decide_all(minus_full, {"approval_gap": 0.05})})
    console = Console(width=80, record=True)
    print_summary(root, console)
    text = console.export_text().split("approval_gap (δ = 0.05)")[1]
    row = next(line for line in text.splitlines() if line.startswith("│ lora-r2"))
    assert "+0.030 [+0.020, +0.040]" in row and "higher, within δ" in row  # non-zero, and inside ±δ


def test_summaries_written_before_the_contract_read_in_its_shape(tmp_path):
    """A run folder keeps evaluations while their settings are unchanged, so older summaries (groups
    nested per task) are read into the contract's shape: no group named "gap", the gap table filled."""
    root = make_run(tmp_path / "run", seeds=(0,), optional=False)
    rd = store.RunDir(root)
    path = rd.eval_paths("lora-r1", 0, "toxicity")[0]
    s = store.read_json(path)
    gap = {**rec(0.01, 0.03), "raw_gap": 0.07, "null_gap": 0.06, "p_value": 0.4, "max_group": "muslim",
           "min_group": "christian"}
    s["groups"] = {"groups": s["groups"], "gap": {"toxic_fraction": gap}, "small_groups": {}}
    del s["gaps"]
    store.write_json(path, s)
    rows = pd.DataFrame({"x": [0]})
    rd.write_eval("full", 0, "adult", {"metrics": {"accuracy": rec(0.8)},
                                       "by_group": {"sex": {"F": {"count": 10, "accuracy": rec(0.7)}}},
                                       "gaps": {"sex": {"accuracy_disparity": gap}}}, rows)
    run = load_run(root)
    from lorafair.report.load import group_records

    assert set(group_records(run, "toxicity")["lora-r1"]) == {"muslim", "christian"}
    assert run.evals["toxicity"][("lora-r1", 0)]["gaps"]["toxic_fraction"]["raw_gap"] == 0.07
    assert group_records(run, "adult")["full"]["sex: F"]["accuracy"]["value"] == 0.7
    assert set(run.evals["adult"][("full", 0)]["gaps"]) == {"accuracy_disparity_sex"}
    build_report(root)
    assert "| lora-r1 | 0 | toxic_fraction | 0.070 |" in (root / "report" / "summary.md").read_text()


def test_more_data_clause_says_what_more_data_would_show():
    from lorafair.report.verdict import _more_data_clause

    beyond = {"value": 0.03, "margin": 0.02}
    assert _more_data_clause(beyond, "prompts") == (
        " (the observed difference is at or beyond δ, so more data would not be expected to show equivalence)")
    beyond["more_data"] = {"units": 90, "seeds": None, "n_units": 64, "n_seeds": 3, "goal": "non-zero"}
    assert _more_data_clause(beyond, "prompts").endswith(
        "; about 90 prompts (now 64) would show it non-zero if it stays as observed")
    inside = {"value": 0.005, "margin": 0.02,
              "more_data": {"units": None, "seeds": 7, "n_units": 64, "n_seeds": 3, "goal": "equivalent"}}
    assert _more_data_clause(inside, "prompts") == (
        "; about 7 training seeds (now 3) would bring the 90% interval within ±δ if the difference stays as observed")
    assert _more_data_clause({"value": 0.005, "margin": 0.02}, "prompts") == ""
