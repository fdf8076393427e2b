"""scripts/recompare.py re-decides a committed study from its stored per-item results: on a run grown
by run until decided it gives back the same compare.json, sequential decisions included."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("recompare_script", REPO / "scripts" / "recompare.py")
recompare_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recompare_script)


def test_recompare_of_a_run_until_decided_keeps_its_decisions(tmp_path, monkeypatch, capsys):
    src = REPO / "results" / "findings-detox"
    assert (src / "sequential.json").is_file()
    run = tmp_path / "findings-detox"
    shutil.copytree(src, run)
    before = json.loads((run / "compare.json").read_text())
    monkeypatch.setattr(sys, "argv", ["recompare.py", str(run)])
    recompare_script.main()
    after = json.loads((run / "compare.json").read_text())
    assert after == before
    assert after["sequential"]["arms"]["lora-r4"]["status"] == "decided"
    assert "->" not in capsys.readouterr().out  # no decision changed
