"""Every Python snippet of docs/python-api.md runs, in order, in one namespace, on the studies
committed in results/ (the snippets that run a study, marked ``<!-- slow: runs a study -->``, in a
slow test of their own)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "python-api.md"
BLOCK = re.compile(r"(<!-- slow: runs a study -->\n)?```python\n(.*?)```", re.S)


def snippets() -> list[tuple[bool, str]]:
    """(runs a study, code) of every python block, in order."""
    return [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]


def _exec_all(tmp_path: Path, monkeypatch, slow: bool) -> dict:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").symlink_to(ROOT / "results")
    ns: dict = {}
    for i, (is_slow, code) in enumerate(snippets()):
        if is_slow and not slow:
            continue
        try:
            exec(compile(code, f"{DOC.name} snippet {i + 1}", "exec"), ns)
        except Exception as e:  # name the snippet that broke
            raise AssertionError(f"{DOC.name} snippet {i + 1} failed: {type(e).__name__}: {e}\n{code}") from e
    return ns


def test_the_doc_has_the_promised_snippets():
    code = "\n".join(c for _, c in snippets())
    for call in ("load_run(", "decisions()", "metrics()", "items()", "training()", "lorafair.run(", "load_study(",
                 "errorbar(", "results/findings-identity", "read_csv("):
        assert call in code, call
    assert sum(slow for slow, _ in snippets()) == 2


def test_snippets_on_committed_results_run(tmp_path, monkeypatch, capsys):
    import matplotlib.pyplot as plt

    ns = _exec_all(tmp_path, monkeypatch, slow=False)
    plt.close("all")
    assert (tmp_path / "minus_full_by_rank.png").stat().st_size > 10_000
    assert (tmp_path / "training_loss.png").stat().st_size > 5_000
    assert list(ns["lora"]["rank"].unique()) == [1, 4, 16, 64]
    assert ns["side"].shape[0] == 20  # base, r1, r4, r16, r64 x the four shared toxicity metrics
    out = capsys.readouterr().out
    assert "shared decisions differ between the two studies" in out and "equivalent on every metric" in out
    assert ns["worst"].prompt.notna().all() and len(ns["worst"]) == 3


@pytest.mark.slow
def test_snippets_that_run_a_study(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    ns = _exec_all(tmp_path, monkeypatch, slow=True)
    plt.close("all")
    assert ns["fresh"].path == Path("runs/smoke-tiny")
    assert {"decisions.csv", "decisions.parquet", "metrics.parquet", "compare.json"} <= {
        p.name for p in (tmp_path / "runs" / "smoke-tiny").iterdir()}
    assert set(ns["per_seed"].arm) == {"base", "full", "lora-r2"}
