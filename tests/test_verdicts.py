"""Verdicts end to end on the tiny model: an arm that cannot have fitted (learning rate far too low)
gets "no verdict: did not fit" in compare.json, on the console and in the report; the report and its
summary say each sentence once; the console, second-scorer table included, fits 80 columns."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from lorafair.report import build_report
from lorafair.report.summary import print_summary
from lorafair.study import runner as runner_mod
from lorafair.study.config import study_from_dict


@pytest.fixture(scope="module")
def crippled(tmp_path_factory):
    from conftest import tiny_study_dict, write_corpus

    tmp = tmp_path_factory.mktemp("crippled")
    d = tiny_study_dict(tmp / "run", write_corpus(tmp / "corpus.jsonl"),
                        training={"max_steps": 24, "lr_full": 3e-3, "eval_every": 4, "checkpoint_every": 8},
                        evaluation={"samples": 2, "n_prompts": 6, "max_new_tokens": 3},
                        arms=["base", "full", {"type": "lora", "rank": 2, "lr": 1e-9}])
    runner_mod.Runner(study_from_dict(d, "crippled.yaml"), log=lambda m: None).run(analyses=False)
    return tmp / "run"


def test_crippled_arm_gets_no_verdict_everywhere(crippled):
    cmp = json.loads((crippled / "compare.json").read_text())
    gate = cmp["fit"]["lora-r2"]
    assert gate["fitted"] is False and gate["loss_share"] > 0.9, gate
    decided = cmp["decisions"]["lora-r2"]
    assert decided and all(d["decision"].startswith("no verdict: did not fit (validation loss") for d in
                           decided.values() if d["decision"] != "no margin")
    assert all(d["fitted"] is False and d["p_holm"] is None for d in decided.values())
    assert cmp["primary"] == ["toxic_fraction", "toxic_fraction_gap"]
    assert decided["toxic_fraction"]["primary"] and not decided["mean_score"]["primary"]
    assert {"base", "lora-r2"} == set(cmp["decisions"])
    console = Console(width=80, record=True)
    print_summary(crippled, console)
    text = console.export_text()
    row = next(line for line in text.split("toxic_fraction (primary")[1].splitlines() if line.startswith("│ lora-r2"))
    assert "no verdict: did not" in row  # the table cell (wrapped in 80 columns) ...
    assert "LoRA r=2 did not fit: validation loss" in text.replace("\n", " ")  # ... and the reason
    html = (crippled / "report" / "report.html").read_text()
    assert "no verdict: did not fit" in html
    assert "LoRA r=2 did not fit: validation loss" in html
    assert html.index("<img") < html.index("<table")  # the forest plot comes first
    assert "Smallest rank equivalent to full fine-tuning within δ on every primary metric" in html
    assert "none established" in html


def test_no_report_or_summary_line_repeats(crippled):
    build_report(crippled)
    md = (crippled / "report" / "summary.md").read_text().splitlines()
    bullets = [line for line in md if line.startswith("- ")]
    assert bullets and len(bullets) == len(set(bullets)), [b for b in bullets if bullets.count(b) > 1]
    html = (crippled / "report" / "report.html").read_text()
    items = html.split("<li")[1:]
    assert len(items) == len(set(items))


def test_console_with_the_second_scorer_fits_80_columns(crippled):
    console = Console(width=80, record=True)
    print_summary(crippled, console)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    start = next(i for i, line in enumerate(lines) if line.startswith("second scorer ("))
    header = next(line for line in lines[start:] if "tox frac" in line)
    for col in ("arm", "seed", "tox frac", "exp max", "tox prob", "ρ", "agree", "κ"):
        assert col in header  # no column folded into pieces
    table = lines[start:start + 8]
    assert not any("…" in line for line in table), table  # nor cut short
    values = [line for line in table if line.strip().startswith(("base", "lora-r2", "full"))]
    assert len(values) == 3 and all(len(line.split()) == 9 for line in values)  # every column, none empty
