"""docs/findings.md quotes only what results/ holds, and every committed study rebuilds its report."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from test_report import make_run

from lorafair.report import build_report

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("findings", REPO / "scripts" / "findings.py")
findings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(findings)
STUDIES = sorted(p.name for p in (REPO / "results").iterdir() if p.is_dir()) if (REPO / "results").is_dir() else []

DOC = """# findings
text 0.5 outside blocks is not checked
<!-- findings:decisions:s -->
<!-- /findings -->
<!-- findings:pooled:s -->
<!-- /findings -->
<!-- findings:fit:s -->
<!-- /findings -->
<!-- findings:cost:s -->
<!-- /findings -->
"""


def test_check_fails_until_written_and_after_any_number_changes(tmp_path, capsys):
    make_run(tmp_path / "results" / "s")
    doc = tmp_path / "findings.md"
    doc.write_text(DOC)
    args = ["--doc", str(doc), "--results", str(tmp_path / "results")]
    assert findings.main(args + ["--check"]) == 1
    assert findings.main(args) == 0
    assert findings.main(args + ["--check"]) == 0
    text = doc.read_text()
    # expected_max_toxicity 0.40 − 0.20 and toxic_fraction 0.20 − 0.08, both ± 0.025, margins 0.03 and 0.02
    assert ("| lora-r1 | +0.200 [+0.175, +0.225] **worse, beyond δ** | +0.120 [+0.095, +0.145] **worse, beyond δ** |"
            in text)
    assert "| total | 0.4 |" in text  # 26 s of stages
    doc.write_text(text.replace("+0.120 [+0.095", "+0.121 [+0.095", 1))
    assert findings.main(args + ["--check"]) == 1
    assert "decisions:s" in capsys.readouterr().out


def test_unknown_block_is_refused(tmp_path):
    doc = tmp_path / "findings.md"
    doc.write_text("<!-- findings:nope:s -->\n<!-- /findings -->\n")
    with pytest.raises(SystemExit, match="nope:s"):
        findings.main(["--doc", str(doc), "--results", str(tmp_path)])


def test_committed_findings_match_committed_results():
    assert {"findings-detox", "findings-detox-gemma", "findings-identity", "findings-lending"} <= set(STUDIES)
    assert findings.main(["--check"]) == 0


@pytest.mark.parametrize("study", STUDIES)
def test_committed_results_rebuild_their_report(tmp_path, study):
    copy = tmp_path / study
    shutil.copytree(REPO / "results" / study, copy)
    shutil.rmtree(copy / "report", ignore_errors=True)
    html = build_report(copy)
    assert html.is_file() and (copy / "report" / "summary.md").is_file()
    assert not list(copy.rglob("*.safetensors"))
