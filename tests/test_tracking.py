"""Training curves and decisions in TensorBoard and MLflow, end to end on the tiny model: the event
files and the MLflow store are read back and compared with train_log.jsonl, val_curve.json,
study.json and the decisions table. Each backend's test is skipped (saying why) only when its extra
is not installed; ``make test`` installs both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lorafair
from lorafair.errors import UserError
from lorafair.study.config import study_from_dict

from conftest import tiny_study_dict, write_corpus

SEEDS = [0, 1]


def _run(root: Path, tracking) -> lorafair.Run:
    study = tiny_study_dict(root / "run", write_corpus(root / "corpus.jsonl"), seeds=SEEDS, tracking=tracking)
    return lorafair.run(study, report=False, log=lambda m: None)


def _expected(run: lorafair.Run, arm: str, seed: int) -> tuple[list[dict], list[dict]]:
    d = run.path / arm / f"seed-{seed}"
    log = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]
    return log, json.loads((d / "val_curve.json").read_text())


def _study_hash(run: lorafair.Run) -> str:
    return json.loads((run.path / "study.json").read_text())["hash"]


def test_tensorboard_event_files_hold_every_arm_and_seed(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install 'lorafair[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path, "tensorboard")
    root = run.path / "tracking" / "tensorboard"
    for arm in ("full", "lora-r2"):
        for seed in SEEDS:
            ea = EventAccumulator(str(root / arm / f"seed-{seed}"), size_guidance={"scalars": 0, "tensors": 0})
            ea.Reload()
            log, curve = _expected(run, arm, seed)
            loss = [(e.step, e.value) for e in ea.Scalars("train/loss")]
            assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in log]
            assert [e.value for e in ea.Scalars("train/lr")] == pytest.approx([r["lr"] for r in log], rel=1e-6)
            val = [(e.step, e.value) for e in ea.Scalars("val/loss")]
            assert val == [(c["step"], pytest.approx(c["val_loss"], rel=1e-6)) for c in curve]
            params = ea.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode()
            assert f"study_hash: {_study_hash(run)}" in params and "precision: float32" in params
            assert f"seed: {seed}" in params
    assert not (root / "base").exists()  # base is not trained
    ea = EventAccumulator(str(root / "decisions"), size_guidance={"scalars": 0})
    ea.Reload()
    d = run.decisions()
    want = {f"minus_full/{r.arm}/{r.metric}": r.minus_full for r in d.itertuples()}
    got = {tag: ea.Scalars(tag)[0].value for tag in ea.Tags()["scalars"]}
    assert got == pytest.approx(want, rel=1e-6)


def test_mlflow_store_holds_every_arm_and_seed(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install 'lorafair[mlflow]'")
    pytest.importorskip("sqlalchemy", reason="the mlflow extra is not installed: pip install 'lorafair[mlflow]'")
    from mlflow.tracking import MlflowClient

    run = _run(tmp_path, {"backend": "mlflow", "experiment": "tiny-curves"})
    db = run.path / "tracking" / "mlflow.db"
    assert db.is_file()  # a local SQLite store, no server
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("tiny-curves")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {f"{a}/seed-{s}" for a in ("full", "lora-r2") for s in SEEDS} | {"decisions"}
    for arm in ("full", "lora-r2"):
        for seed in SEEDS:
            r = runs[f"{arm}/seed-{seed}"]
            assert r.info.status == "FINISHED"
            assert r.data.params["study_hash"] == _study_hash(run) and r.data.params["precision"] == "float32"
            assert r.data.params["arm"] == arm and r.data.params["seed"] == str(seed)
            log, curve = _expected(run, arm, seed)
            hist = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "train_loss"))
            assert hist == [(x["step"], pytest.approx(x["loss"])) for x in log]
            lr = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "lr"))
            assert lr == [(x["step"], pytest.approx(x["lr"])) for x in log]
            val = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_loss"))
            assert val == [(c["step"], pytest.approx(c["val_loss"])) for c in curve]
    dec = runs["decisions"]
    d = run.decisions()
    assert dec.data.metrics == pytest.approx({f"minus_full/{r.arm}/{r.metric}": r.minus_full for r in d.itertuples()})
    local = client.download_artifacts(dec.info.run_id, "decisions.csv", str(tmp_path))
    assert Path(local).read_text() == d.to_csv(index=False)


def test_mlflow_continues_an_unfinished_run_of_the_same_name(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install 'lorafair[mlflow]'")
    pytest.importorskip("sqlalchemy", reason="the mlflow extra is not installed: pip install 'lorafair[mlflow]'")
    from lorafair.training.tracking import open_tracker

    cfg = study_from_dict({"tracking": "mlflow"}).tracking
    first = open_tracker(cfg, tmp_path, "x", "lora-r2", 0, {"study_hash": "abc"})
    first.log_step({"step": 1, "loss": 2.0, "lr": 1e-3})
    first.close(finished=False)  # killed
    again = open_tracker(cfg, tmp_path, "x", "lora-r2", 0, {"study_hash": "abc"})
    assert again.run_id == first.run_id
    again.log_step({"step": 2, "loss": 1.5, "lr": 5e-4, "val_loss": 1.7})
    again.close()
    third = open_tracker(cfg, tmp_path, "x", "lora-r2", 0, {"study_hash": "abc"})
    assert third.run_id != first.run_id  # a finished run is not reopened
    hist = sorted((m.step, m.value) for m in again.client.get_metric_history(first.run_id, "train_loss"))
    assert hist == [(1, 2.0), (2, 1.5)]


def test_tracking_section_is_strict(tmp_path):
    assert study_from_dict({}).tracking.backend == "none"
    assert study_from_dict({"tracking": "tensorboard"}).tracking.backend == "tensorboard"
    assert study_from_dict({"tracking": {"backend": "mlflow", "uri": "sqlite:///x.db"}}).tracking.uri == "sqlite:///x.db"
    with pytest.raises(UserError, match="tracking.backend.*wandb"):
        study_from_dict({"tracking": "wandb"})
    with pytest.raises(UserError, match="unknown key 'uir'; did you mean 'uri'"):
        study_from_dict({"tracking": {"backend": "mlflow", "uir": "x"}})
    with pytest.raises(UserError, match="mlflow backend only"):
        study_from_dict({"tracking": {"backend": "tensorboard", "uri": "sqlite:///x.db"}})


def test_a_missing_extra_is_one_line_before_anything_is_written(tmp_path, monkeypatch, corpus_file):
    import importlib.util

    from lorafair.study.preflight import preflight

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    study = study_from_dict(tiny_study_dict(tmp_path / "run", corpus_file, tracking="mlflow"))
    with pytest.raises(UserError, match=r"tracking: mlflow needs the mlflow package.*lorafair\[mlflow\]"):
        preflight(study)
    assert not (tmp_path / "run").exists()


def test_tracking_leaves_the_study_hash_unchanged(tmp_path, corpus_file):
    from lorafair.study.config import resolved_dict
    from lorafair.store.rundir import RunDir

    for name, tracking in (("a", "none"), ("b", "tensorboard")):
        rd = RunDir(tmp_path / name)
        rd.write_study(resolved_dict(study_from_dict(tiny_study_dict(tmp_path / name, corpus_file, tracking=tracking))))
    hashes = {json.loads((tmp_path / n / "study.json").read_text())["hash"] for n in "ab"}
    assert len(hashes) == 1
