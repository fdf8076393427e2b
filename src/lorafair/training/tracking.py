"""Training curves in the experiment trackers people already watch: TensorBoard or MLflow.

A tracker receives the training loop's step rows (``step``, ``loss``, ``lr`` and, at validation
steps, ``val_loss``) through the loop's ``on_step`` hook, one tracker per arm × seed, shown as a run
named ``<arm>/seed-<n>`` whose parameters hold the study hash and the precision. After the
comparison, :func:`log_decisions` adds a run named ``decisions``: every arm − full difference as a
metric and the decisions table (``decisions.csv``) as text or artifact.

- ``tensorboard``: event files under ``<dir>/tensorboard/<arm>/seed-<n>/`` (``tensorboard --logdir
  <dir>/tensorboard``); scalars ``train/loss``, ``train/lr``, ``val/loss``; the parameters as text.
- ``mlflow``: a local SQLite store ``<dir>/mlflow.db`` with artifacts in ``<dir>/mlflow-artifacts``
  unless ``tracking.uri`` names another store (never a server by default); experiment = the study's
  name; metrics ``train_loss``, ``lr``, ``val_loss``. A resumed training continues its unfinished run.

Both packages are optional extras (``lorafair[tensorboard]``, ``lorafair[mlflow]``), imported only
when a study asks for them; :func:`check_available` is the pre-flight check.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from lorafair.errors import UserError

if TYPE_CHECKING:
    from lorafair.study.config import TrackingConfig

NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}  # backend -> (module, extra)
DECISIONS_RUN = "decisions"


class Tracker(Protocol):
    """One arm × seed's run in a tracker."""

    def log_step(self, row: dict) -> None: ...

    def close(self, finished: bool = True) -> None:
        """End the run; ``finished=False`` when training stopped before its end (killed, diverged)."""


def check_available(backend: str) -> None:
    """UserError unless the package the backend needs is installed."""
    if backend == "none":
        return
    module, extra = NEEDS[backend]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"tracking: {backend} needs the {module} package, which is not installed; "
                        f"pip install 'lorafair[{extra}]' or set tracking: none")


def tracking_dir(cfg: "TrackingConfig", output: Path) -> Path:
    """Where the event files or the local store go: ``tracking.dir``, else ``<output>/tracking``."""
    return Path(cfg.dir) if cfg.dir else Path(output) / "tracking"


def run_name(arm: str, seed: int) -> str:
    return f"{arm}/seed-{seed}"


def open_tracker(cfg: "TrackingConfig", output: Path, experiment: str, arm: str, seed: int,
                 params: dict) -> Tracker | None:
    """The tracker of one arm × seed (None for ``backend: none``); ``params`` are logged once."""
    if cfg.backend == "none":
        return None
    check_available(cfg.backend)
    root = tracking_dir(cfg, output)
    if cfg.backend == "tensorboard":
        return TensorBoardTracker(root / "tensorboard" / arm / f"seed-{seed}", params)
    client = _mlflow_client(cfg, root)
    return MlflowTracker(client, _experiment(client, cfg, root, experiment), run_name(arm, seed), params)


def log_decisions(cfg: "TrackingConfig", output: Path, experiment: str, decisions: pd.DataFrame,
                  params: dict) -> None:
    """The final decisions (one row per arm × metric, :func:`lorafair.store.tables.decisions_table`)
    as a run named ``decisions``: ``minus_full`` of every row as a metric ``<arm>/<metric>``, the
    table as text (TensorBoard) or as the artifact ``decisions.csv`` (MLflow)."""
    if cfg.backend == "none":
        return
    check_available(cfg.backend)
    root = tracking_dir(cfg, output)
    values = {f"{r.arm}/{r.metric}": float(r.minus_full) for r in decisions.itertuples() if pd.notna(r.minus_full)}
    if cfg.backend == "tensorboard":
        t = TensorBoardTracker(root / "tensorboard" / DECISIONS_RUN, params)
        for name, v in values.items():
            t.writer.add_scalar(f"minus_full/{name}", v, 0)
        t.writer.add_text("decisions", decisions.to_markdown(index=False) if _has_tabulate() else
                          "    " + decisions.to_string(index=False).replace("\n", "\n    "), 0)
        t.close()
        return
    client = _mlflow_client(cfg, root)
    t = MlflowTracker(client, _experiment(client, cfg, root, experiment), DECISIONS_RUN, params, resume=False)
    for name, v in values.items():
        client.log_metric(t.run_id, f"minus_full/{name}", v, step=0)
    client.log_text(t.run_id, decisions.to_csv(index=False), "decisions.csv")
    t.close()


def _has_tabulate() -> bool:
    return importlib.util.find_spec("tabulate") is not None


class TensorBoardTracker:
    """Event files of one run (``torch.utils.tensorboard``, which needs the tensorboard package)."""

    def __init__(self, folder: Path, params: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), flush_secs=10)
        self.writer.add_text("params", "\n".join(f"- {k}: {v}" for k, v in params.items()), 0)

    def log_step(self, row: dict) -> None:
        step = int(row["step"])
        self.writer.add_scalar("train/loss", float(row["loss"]), step)
        self.writer.add_scalar("train/lr", float(row["lr"]), step)
        if row.get("val_loss") is not None:
            self.writer.add_scalar("val/loss", float(row["val_loss"]), step)

    def close(self, finished: bool = True) -> None:
        self.writer.close()


def _mlflow_client(cfg: "TrackingConfig", root: Path):
    from mlflow.tracking import MlflowClient

    if cfg.uri:
        return MlflowClient(tracking_uri=cfg.uri)
    root.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")


def _experiment(client, cfg: "TrackingConfig", root: Path, name: str) -> str:
    """The experiment's id, created on first use (artifacts beside a local store)."""
    found = client.get_experiment_by_name(cfg.experiment or name)
    if found is not None:
        return found.experiment_id
    where = None if cfg.uri else (root.resolve() / "mlflow-artifacts").as_uri()
    return client.create_experiment(cfg.experiment or name, artifact_location=where)


class MlflowTracker:
    """One MLflow run, named ``name``; with ``resume`` an unfinished run of that name is continued."""

    FLUSH_S = 5.0

    def __init__(self, client, experiment_id: str, name: str, params: dict, resume: bool = True):
        self.client = client
        run = None
        if resume:
            runs = client.search_runs([experiment_id], f"attributes.run_name = '{name}' and "
                                      "attributes.status != 'FINISHED'", max_results=1)
            run = runs[0] if runs else None
        if run is None:
            run = client.create_run(experiment_id, run_name=name)
            for k, v in params.items():
                client.log_param(run.info.run_id, k, v)
        self.run_id = run.info.run_id
        self.pending: list = []
        self.flushed = time.monotonic()

    def log_step(self, row: dict) -> None:
        """The loss, the learning rate and (at validation steps) the validation loss, buffered and
        written together every ``FLUSH_S`` seconds, at validation steps and at the end: a store write
        costs tens of milliseconds, more than a short training step."""
        from mlflow.entities import Metric

        step, now = int(row["step"]), int(time.time() * 1000)
        values = {"train_loss": row["loss"], "lr": row["lr"], "val_loss": row.get("val_loss")}
        self.pending += [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        if row.get("val_loss") is not None or time.monotonic() - self.flushed >= self.FLUSH_S:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):  # MLflow takes up to 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending, self.flushed = [], time.monotonic()

    def close(self, finished: bool = True) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")


__all__ = ["Tracker", "check_available", "open_tracker", "log_decisions", "tracking_dir", "run_name"]
