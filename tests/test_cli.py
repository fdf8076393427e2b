"""The command line: bad input exits 2 with one line and leaves nothing half written; the listing,
scoring and a run in which one arm diverges while the others go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorafair.models import sources as models
from lorafair.cli import app
from lorafair.store.rundir import read_json

from conftest import write_corpus

REPO = Path(__file__).resolve().parents[1]


def error_line(result) -> str:
    """The error is the last line on stderr, one line, and nothing went to stdout."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and result.stdout.strip() == ""
    return lines[-1]


def nothing_half_written(out: Path) -> None:
    if not out.exists():
        return
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp") or ".tmp" in p.parts[-2:]], files
    assert not [p for p in files if p.name in ("done.json", "state.json")], files
    assert not list(out.glob("*/seed-*")), list(out.rglob("*"))


# (name, study sections, key expected in the message)
BAD_FILES = [
    ("unknown-top", {"trainig": {"max_steps": 2}}, "did you mean 'training'"),
    ("unknown-arm-key", {"arms": [{"type": "lora", "rnak": 2}]}, "did you mean 'rank'"),
    ("wrong-type", {"training": {"batch_size": "eight"}}, "training.batch_size"),
    ("rank-zero", {"arms": [{"type": "lora", "rank": 0}]}, "arms[0].rank: must be >= 1"),
    ("rank-too-large", {"arms": ["full", {"type": "lora", "rank": 40}]}, "at most 32"),
    ("no-such-module", {"arms": [{"type": "lora", "rank": 2, "target_modules": ["q_proj", "c_attn"]}]}, "'c_attn'"),
    ("lr-zero", {"training": {"lr_lora": 0}}, "training.lr_lora"),
    ("arm-lr-negative", {"arms": [{"type": "full", "lr": -1}]}, "arms[0].lr"),
    ("no-seeds", {"seeds": []}, "seeds"),
    ("selection-is-evaluation", {"data": {"corpus": "self-detox", "selection_scorer": "jigsaw-bilstm"}},
     "data.selection_scorer"),
    ("second-is-evaluation", {"evaluation": {"second_scorer": "jigsaw-bilstm"}}, "evaluation.second_scorer"),
    ("unreachable-model", {"model": {"source": "some-org/does-not-exist"}}, "smollm2-135m"),
]


@pytest.mark.parametrize("name, sections, expected", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_validate_and_run_reject_bad_input(cli, study_file, tmp_path, offline, name, sections, expected):
    path = study_file(f"{name}.yaml", **sections)
    for args in (["validate", str(path)], ["run", str(path), "--no-analyses", "--no-report"]):
        line = error_line(cli.invoke(app, args))
        assert expected in line, line
        if name != "unreachable-model":
            assert str(path) in line
        nothing_half_written(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # every one of these fails before the run folder is made


def test_malformed_yaml(cli, tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("name: x\narms:\n  - base\n  - {type: lora, rank: 2\nseeds: [0]\n")
    for cmd in ("validate", "run"):
        line = error_line(cli.invoke(app, [cmd, str(f)]))
        assert str(f) in line and "line 5" in line and "malformed YAML" in line


def test_empty_corpus(cli, study_file, tmp_path):
    empty = write_corpus(tmp_path / "empty.jsonl", [])
    path = study_file(data={"path": str(empty)})
    line = error_line(cli.invoke(app, ["run", str(path), "--no-analyses", "--no-report"]))
    assert str(empty) in line and "no prompts" in line
    nothing_half_written(tmp_path / "run")


def test_output_not_writable(cli, study_file, tmp_path):
    (tmp_path / "plain-file").write_text("x")
    path = study_file(output=str(tmp_path / "plain-file" / "run"))
    line = error_line(cli.invoke(app, ["run", str(path), "--no-analyses", "--no-report"]))
    assert "output: cannot write" in line and "plain-file" in line


def test_unknown_arm_selection(cli, study_file, tmp_path):
    line = error_line(cli.invoke(app, ["run", str(study_file()), "--arms", "lora-r3"]))
    assert "'lora-r3'" in line and "lora-r2" in line
    nothing_half_written(tmp_path / "run")


def test_exit_code_from_a_real_process(study_file):
    path = study_file(arms=[{"type": "lora", "rnak": 4}])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "lorafair", "validate", str(path)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "did you mean 'rank'" in p.stderr and str(path) in p.stderr


def test_validate_good_file(cli, study_file, tmp_path):
    path = study_file(arms=["base", "full", {"type": "lora", "ranks": [1, 2]}], seeds=[0, 1])
    r = cli.invoke(app, ["validate", str(path)])
    assert r.exit_code == 0, r.output
    assert "valid" in r.stdout and "base, full, lora-r1, lora-r2" in r.stdout and "[0, 1]" in r.stdout
    assert not (tmp_path / "run").exists()


def test_models_lists_packaged(cli):
    r = cli.invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    for name, p in models.PACKAGED.items():
        assert name in r.stdout and p.pip in r.stdout
    assert "tiny-random" in r.stdout
    assert "smollm2-135m" in r.stdout and "cached" in r.stdout.splitlines()[0]


def test_models_prepare_unknown(cli):
    line = error_line(cli.invoke(app, ["models", "--prepare", "gpt-9"]))
    assert "'gpt-9'" in line and "smollm2-135m" in line


def test_score_prints_json(cli):
    r = cli.invoke(app, ["score", "You are so dumb and stupid!", "What a lovely garden."])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    toxic, kind = out["scores"]
    assert toxic["text"] == "You are so dumb and stupid!"
    assert toxic["toxic"] == pytest.approx(0.9889, abs=1e-4)
    assert kind["toxic"] < 0.2
    assert out["scorer"]


def test_score_unknown_scorer(cli):
    line = error_line(cli.invoke(app, ["score", "hi", "--scorer", "nope"]))
    assert "nope" in line


def test_diverging_arm_stops_and_the_others_go_on(cli, study_file, tmp_path):
    path = study_file(arms=["base", {"type": "full", "lr": 1e10}, {"type": "lora", "rank": 2}],
                      training={"warmup_ratio": 0.0})
    r = cli.invoke(app, ["run", str(path), "--no-analyses", "--no-report"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "run"
    failed = read_json(out / "full" / "seed-0" / "failed.json")
    assert failed["step"] == 2 and failed["loss"] == "nan" and failed["lr"] == 1e10
    assert "STOPPED" in r.stderr and "at step 2" in r.stderr
    assert "diverged, not evaluated: full seed 0: loss became nan at step 2 with lr 10000000000.0" in r.stdout
    assert not (out / "full" / "seed-0" / "done.json").exists()
    assert not (out / "full" / "seed-0" / "model").exists()
    done = read_json(out / "lora-r2" / "seed-0" / "done.json")
    assert done["steps"] == 4
    for arm in ("base", "lora-r2"):
        assert (out / arm / "seed-0" / "eval" / "toxicity.json").is_file()
    assert not (out / "full" / "seed-0" / "eval").exists()
    assert not list(out.rglob("*.tmp"))


def test_library_progress_bars_and_future_warnings_stay_out_of_the_console():
    """A model load through the command line's set-up prints no "Loading weights" bar and no
    FutureWarning (a fresh process, so nothing was imported before)."""
    code = ("import warnings, sys\n"
            "from lorafair.cli import quiet_libraries\n"
            "quiet_libraries()\n"
            "from transformers.utils import logging\n"
            "from lorafair.models import sources\n"
            "sources.load_model('tiny-random', seed=0)\n"
            "warnings.warn('deprecated', FutureWarning)\n"
            "print('ok', logging.is_progress_bar_enabled())\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok False"
    assert "Loading weights" not in r.stderr and "FutureWarning" not in r.stderr, r.stderr
