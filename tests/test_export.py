"""lorafair export: a run directory's result files without its weights, enough to rebuild the report."""

from __future__ import annotations

from pathlib import Path

from test_report import make_run

from lorafair.cli import app
from lorafair.store.export import result_files
from lorafair.report import build_report

WEIGHTS = ["full/seed-0/model/model.safetensors", "lora-r1/seed-0/adapter/adapter_model.safetensors",
           "lora-r1/seed-0/checkpoint/optimizer.pt", "lora-r1/seed-0/checkpoint/trainer_state.json",
           ".lock", "compare.json.abc.tmp"]


def _run_with_weights(root: Path) -> Path:
    run = make_run(root)
    for rel in WEIGHTS:
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(b"\0" * 64)
    (run / "lora-r1/seed-0/adapter/adapter_config.json").write_text('{"r": 1}')
    return run


def test_export_keeps_results_drops_weights_and_rebuilds_the_same_report(tmp_path, cli):
    run = _run_with_weights(tmp_path / "run")
    dest = tmp_path / "results" / "synthetic"
    got = cli.invoke(app, ["export", str(run), str(dest)])
    assert got.exit_code == 0, got.output
    copied = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert not copied & set(WEIGHTS)
    assert "lora-r1/seed-0/adapter/adapter_config.json" in copied
    assert {"study.yaml", "compare.json"} <= copied
    assert copied == {p.as_posix() for p in result_files(run)}
    for rel in copied:
        assert (dest / rel).read_bytes() == (run / rel).read_bytes(), rel
    assert not [p for p in dest.parent.iterdir() if p.name != "synthetic"]  # no temporary folder left
    build_report(run)
    build_report(dest)
    assert (dest / "report/summary.md").read_text() == (run / "report/summary.md").read_text()


def test_export_refuses_bad_input_in_one_line(tmp_path, cli):
    run = _run_with_weights(tmp_path / "run")
    dest = tmp_path / "out"
    assert cli.invoke(app, ["export", str(run), str(dest)]).exit_code == 0
    again = cli.invoke(app, ["export", str(run), str(dest)])
    assert again.exit_code == 2 and "--force" in again.output and len(again.output.strip().splitlines()) == 1
    assert cli.invoke(app, ["export", str(run), str(dest), "--force"]).exit_code == 0
    not_run = cli.invoke(app, ["export", str(tmp_path / "nothing"), str(tmp_path / "x")])
    assert not_run.exit_code == 2 and "not a run directory" in not_run.output
    assert not (tmp_path / "x").exists()
    inside = cli.invoke(app, ["export", str(run), str(run / "copy")])
    assert inside.exit_code == 2 and "outside" in inside.output
