"""The public Python API (``import lorafair``) end to end on the tiny model, and the tidy tables it
returns, written beside compare.json and kept by export; every value checked against the JSON and
Parquet files it comes from, read here independently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import lorafair
from lorafair.cli import app
from lorafair.errors import UserError
from lorafair.store.tables import DECISION_COLUMNS, METRIC_COLUMNS, TRAINING_COLUMNS

from conftest import tiny_study_dict, write_corpus, write_yaml


def _dtypes(df: pd.DataFrame) -> dict[str, str]:
    return {c: str(t) for c, t in df.dtypes.items()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> lorafair.Run:
    root = tmp_path_factory.mktemp("api")
    study = tiny_study_dict(root / "run", write_corpus(root / "corpus.jsonl"), seeds=[0, 1])
    return lorafair.run(study, report=False, log=lambda m: None)


def test_import_is_light():
    code = ("import sys, lorafair; heavy = [m for m in ('torch', 'pandas', 'transformers', 'numpy') "
            "if m in sys.modules]; print(heavy)")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "[]"
    assert set(lorafair.__all__) >= {"Run", "load_run", "load_study", "run"}


def test_decisions_match_compare_json_and_have_the_documented_columns(tiny_run):
    d = tiny_run.decisions()
    assert _dtypes(d) == DECISION_COLUMNS
    compare = json.loads((tiny_run.path / "compare.json").read_text())
    expected = {(a, m) for a, ms in compare["decisions"].items() for m in ms}
    assert set(zip(d.arm, d.metric)) == expected and len(d) == len(expected)
    assert list(dict.fromkeys(d.arm)) == ["base", "lora-r2"]  # study order: base, LoRA by rank (full is the reference)
    for r in d.itertuples():
        dec, diff = compare["decisions"][r.arm][r.metric], compare["minus_full"][r.arm][r.metric]
        own = compare["pooled"][r.arm][r.metric]
        assert r.decision == dec["decision"] and r.delta == dec["margin"]
        assert (r.minus_full, r.minus_full_lo95, r.minus_full_hi95) == (diff["value"], diff["lo"], diff["hi"])
        assert (r.minus_full_lo90, r.minus_full_hi90) == (diff["lo90"], diff["hi90"])
        assert (r.value, r.lo, r.hi) == (own["value"], own["lo"], own["hi"])
        assert r.fitted is True or r.fitted == True  # noqa: E712 - a numpy bool
    assert d.loc[d.arm == "lora-r2", "rank"].eq(2).all() and d.loc[d.arm == "base", "rank"].isna().all()


def test_metrics_training_and_items_match_the_files(tiny_run):
    m = tiny_run.metrics()
    assert _dtypes(m) == METRIC_COLUMNS
    for (arm, seed) in [("full", 0), ("full", 1), ("lora-r2", 1), ("base", 0)]:
        summary = json.loads((tiny_run.path / arm / f"seed-{seed}" / "eval" / "toxicity.json").read_text())
        got = m[(m.arm == arm) & (m.seed == seed) & (m.kind == "overall")].set_index("metric")
        assert set(got.index) == set(summary["metrics"])
        for name, rec in summary["metrics"].items():
            assert got.loc[name, "value"] == pytest.approx(rec["value"])
            assert got.loc[name, "unit"] == rec["unit"]

    t = tiny_run.training()
    assert _dtypes(t) == TRAINING_COLUMNS
    for (arm, seed) in [("full", 0), ("lora-r2", 1)]:
        log = [json.loads(x) for x in (tiny_run.path / arm / f"seed-{seed}" / "train_log.jsonl").read_text().splitlines()]
        curve = json.loads((tiny_run.path / arm / f"seed-{seed}" / "val_curve.json").read_text())
        got = t[(t.arm == arm) & (t.seed == seed)]
        assert list(got.step) == [r["step"] for r in log] == [1, 2, 3, 4]
        assert list(got.loss) == [r["loss"] for r in log] and list(got.lr) == [r["lr"] for r in log]
        assert got.set_index("step").val_loss.dropna().to_dict() == {c["step"]: c["val_loss"] for c in curve}
    assert set(t.arm) == {"full", "lora-r2"}  # base is not trained

    items = tiny_run.items()
    assert list(items.columns[:2]) == ["arm", "seed"] and str(items.seed.dtype) == "int64"
    assert {"prompt", "continuation", "score", "group"} <= set(items.columns)
    parquet = pd.read_parquet(tiny_run.path / "lora-r2" / "seed-1" / "eval" / "toxicity.parquet")
    mine = items[(items.arm == "lora-r2") & (items.seed == 1)].drop(columns=["arm", "seed"]).reset_index(drop=True)
    assert list(mine.continuation) == list(parquet.continuation) and list(mine.prompt) == list(parquet.prompt)
    assert len(items) == sum(len(pd.read_parquet(p)) for p in tiny_run.path.glob("*/seed-*/eval/toxicity.parquet"))
    with pytest.raises(UserError, match="no evaluation 'lending'"):
        tiny_run.items("lending")


def test_items_of_a_run_without_prompt_text_get_it_from_the_task(tiny_run, tmp_path):
    """Runs written before per-item rows carried the prompt get it joined by prompt_id."""
    from lorafair.api import _with_prompts

    items = tiny_run.items()
    joined = _with_prompts(items.drop(columns=["prompt"]), tiny_run.path)
    assert list(joined.prompt) == list(items.prompt)
    assert list(joined.columns) == list(items.drop(columns=["prompt"]).columns[:3]) + ["prompt"] + \
        list(items.drop(columns=["prompt"]).columns[3:])


def test_tables_on_disk_equal_the_api_tables_and_load_without_lorafair(tiny_run):
    on_disk = pd.read_parquet(tiny_run.path / "decisions.parquet")
    pd.testing.assert_frame_equal(on_disk, tiny_run.decisions())
    csv = pd.read_csv(tiny_run.path / "decisions.csv")  # what a reader without lorafair does
    assert list(csv.columns) == list(DECISION_COLUMNS)
    api = tiny_run.decisions()
    assert list(csv.decision) == list(api.decision)
    assert csv.minus_full_hi90.tolist() == pytest.approx(api.minus_full_hi90.tolist())
    pd.testing.assert_frame_equal(pd.read_parquet(tiny_run.path / "metrics.parquet"), tiny_run.metrics())


def test_export_keeps_the_tables_and_the_copy_reads_the_same(tiny_run, tmp_path, cli):
    dest = tmp_path / "results" / "tiny"
    got = cli.invoke(app, ["export", str(tiny_run.path), str(dest)])
    assert got.exit_code == 0, got.output
    for name in ("decisions.csv", "decisions.parquet", "metrics.parquet"):
        assert (dest / name).read_bytes() == (tiny_run.path / name).read_bytes()
    copy = lorafair.load_run(dest)
    pd.testing.assert_frame_equal(copy.decisions(), tiny_run.decisions())
    pd.testing.assert_frame_equal(copy.training(), tiny_run.training())


def test_report_writes_html_and_copies_it_on_request(tiny_run, tmp_path):
    html = tiny_run.report()
    assert html == tiny_run.path / "report" / "report.html" and html.is_file()
    copied = tiny_run.report(tmp_path / "elsewhere")
    assert copied == tmp_path / "elsewhere" / "report.html" and copied.read_text() == html.read_text()


def test_run_again_keeps_finished_arms_and_only_reruns_what_is_asked(tiny_run):
    done = (tiny_run.path / "full" / "seed-0" / "done.json").read_text()
    lines: list[str] = []
    again = lorafair.run(lorafair.load_study(tiny_run.path / "study.yaml"), arms=["base", "full"], report=False,
                         log=lines.append)
    assert again.path == tiny_run.path
    assert (tiny_run.path / "full" / "seed-0" / "done.json").read_text() == done
    assert any("finished earlier, skipped" in line for line in lines)


def test_cli_run_goes_through_the_same_function(tmp_path, corpus_file, cli, monkeypatch):
    import lorafair.study.runner as runner

    calls = []
    real = runner.run_study

    def spy(study, *a, **kw):
        calls.append(study.name)
        return real(study, *a, **kw)

    monkeypatch.setattr(runner, "run_study", spy)
    f = write_yaml(tmp_path / "s.yaml", tiny_study_dict(tmp_path / "run", corpus_file, arms=["base", "full"]))
    got = cli.invoke(app, ["run", str(f), "--no-analyses", "--no-report"])
    assert got.exit_code == 0, got.output
    assert calls == ["tiny"] and (tmp_path / "run" / "decisions.csv").is_file()


def test_load_study_accepts_paths_dicts_and_studies_and_refuses_the_rest(tmp_path, corpus_file):
    d = tiny_study_dict(tmp_path / "run", corpus_file)
    s = lorafair.load_study(d)
    assert s.name == "tiny" and lorafair.load_study(s) is s
    assert lorafair.load_study(write_yaml(tmp_path / "s.yaml", d)).name == "tiny"
    assert lorafair.load_study("demo").name == "demo"  # a shipped study by name
    with pytest.raises(UserError, match="unknown key 'arn'"):
        lorafair.load_study({**d, "arn": []})
    with pytest.raises(UserError, match="give a study file's path"):
        lorafair.load_study(3)
    with pytest.raises(UserError, match="not a run directory"):
        lorafair.load_run(tmp_path)


def test_committed_study_tables(tmp_path):
    """On a committed study: every decision of compare.json, every metric of every evaluation
    summary, every training log line and every per-item row appears once."""
    path = Path(__file__).resolve().parents[1] / "results" / "findings-detox"
    run = lorafair.load_run(path)
    compare = json.loads((path / "compare.json").read_text())
    d = run.decisions()
    assert _dtypes(d) == DECISION_COLUMNS
    assert len(d) == sum(len(v) for v in compare["decisions"].values())
    r1 = d[(d.arm == "lora-r1") & (d.metric == "toxic_fraction")].iloc[0]
    ref = compare["decisions"]["lora-r1"]["toxic_fraction"]
    assert (r1.decision, r1.minus_full_lo90, r1.delta, r1["rank"]) == (ref["decision"], ref["lo90"], ref["margin"], 1)
    m = run.metrics()
    n_metrics = sum(len(json.loads(p.read_text())["metrics"]) for p in path.glob("*/seed-*/eval/toxicity.json"))
    assert len(m[m.task == "toxicity"]) == n_metrics
    t = run.training()
    assert len(t) == sum(len(p.read_text().splitlines()) for p in path.glob("*/seed-*/train_log.jsonl"))
    items = run.items("toxicity")
    assert len(items) == sum(len(pd.read_parquet(p)) for p in path.glob("*/seed-*/eval/toxicity.parquet"))
    assert items.prompt.notna().all()  # joined from the task's prompts: this run predates the column
