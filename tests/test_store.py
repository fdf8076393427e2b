"""The run directory: every path comes from RunDir, writes are atomic, results round-trip."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lorafair.store import rundir as store
from lorafair.store.rundir import RunDir


def test_layout_and_round_trips(tmp_path):
    rd = RunDir(tmp_path / "run")
    assert not rd.is_run()
    rd.write_study({"name": "s", "seeds": [0], "output": "anywhere"})
    assert rd.is_run() and rd.study_path().is_file()
    other = RunDir(tmp_path / "other")
    other.write_study({"name": "s", "seeds": [0], "output": "elsewhere"})
    h = store.read_json(rd.study_path("json"))["hash"]
    assert h == store.read_json(other.study_path("json"))["hash"]  # the output folder is not the study

    rows = pd.DataFrame({"a": [1, 2]})
    rd.write_eval("lora-r2", 0, "toxicity", {"metrics": {}}, rows)
    rd.write_eval("lora-r2", 0, "probes", {"metrics": {}}, rows)
    rd.write_eval("full", 1, "toxicity", {"metrics": {"m": 1}}, rows)
    assert rd.eval_names("lora-r2", 0) == ["probes", "toxicity"]
    assert set(rd.evals("toxicity")) == {("lora-r2", 0), ("full", 1)}
    summary, back = rd.read_eval("full", 1, "toxicity")
    assert summary == {"metrics": {"m": 1}} and back.equals(rows)
    assert rd.read_eval("base", 0, "toxicity") is None

    (rd.path / "analysis" / "seed-0").mkdir(parents=True)  # not an arm
    assert [k for k, _ in rd.seed_dirs()] == [("full", 1), ("lora-r2", 0)]


def test_failed_then_done(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_failed("lora-r2", 0, {"loss": float("nan"), "step": 3, "lr": 0.1})
    assert rd.failures() == {("lora-r2", 0): {"loss": None, "step": 3, "lr": 0.1}}  # strict JSON: no NaN
    rd.mark_done("lora-r2", 0, {"hash": "h"})
    assert rd.failures() == {}
    # a done marker alone is not a finished arm: the outputs it promises must be there and open
    assert not rd.is_done("lora-r2", 0, "h") and rd.arm_problem("lora-r2", 0) == "config.json is missing"
    assert rd.done("lora-r2", 0) == {"hash": "h"} and rd.done("full", 0) is None


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "compare.json"
    store.write_json(path, {"old": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError):
        store.write_json(path, {"new": 2})
    monkeypatch.undo()
    assert store.read_json(path) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["compare.json"]


def test_damaged_json_is_a_user_error(tmp_path):
    from lorafair.errors import UserError

    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(UserError, match="x.json"):
        store.read_json(tmp_path / "x.json")
