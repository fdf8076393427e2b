"""The checks a study passes before anything is written or trained, shared by `validate` and `run`:
`validate` says "valid" exactly when `run` would start.

Each key's own range is checked when the study is read (schema.key); here come the checks that
need more than one key or something outside the study: the task's files and data sets, the scorer
and probes, the model folder and the arms' fit to its layers, the sizes the data can give, and
the output folder.
"""

from __future__ import annotations

import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lorafair.arms import kinds
from lorafair.models import sources as models
from lorafair.models.checks import check_weight_files
from lorafair.study import overlap, stages
from lorafair.study.config import Arm, Study, check_margin_names, check_primary_names, expand_arms, second_scorer_name
from lorafair.study.counterfactual import MARGINS as CF_MARGINS
from lorafair.errors import UserError
from lorafair.store.rundir import RunDir
from lorafair.training.tracking import check_available


@dataclass
class Plan:
    """What the pre-flight found: the arms to run, the output folder, warnings for the user."""

    arms: list[Arm]
    output: Path
    warnings: list[str] = field(default_factory=list)


def preflight(study: Study, only: list[str] | None = None, analyses: bool = True) -> Plan:
    """Every check `run` makes before it writes anything (`analyses`: whether the shift analyses
    will run, so their needs are checked)."""
    from lorafair.study.context import check_model, make_task, select_arms, split_corpus
    from lorafair.study.session import output_path

    arms = select_arms(expand_arms(study), only)
    task = make_task(study)
    metrics = [*task.default_margins(), *CF_MARGINS]
    check_margin_names(study, metrics)
    check_primary_names(study, metrics)
    plan = Plan(arms, output_path(study))
    if study.model.trust_remote_code:
        plan.warnings.append(f"model.trust_remote_code is true: loading {study.model.source!r} runs the Python "
                             "code that comes with it; use this only for a model you trust")
    check_output(plan.output)
    if study.execution.backend == "ray":
        check_ray_address(study.execution.address)
    overlap.check_task(task, study)  # no evaluation item in the fine-tuning data
    rows = task.check(study)
    if rows is not None:
        check_sizes(study, arms, analyses, split_corpus(rows, task.data.val_fraction, task.data.heldout_fraction))
    else:
        check_sizes(study, arms, analyses, None, task.data)
    if task.uses_scorer:
        from lorafair.scorers import get_scorer

        for key_name, name in (("scorer", study.evaluation.scorer), ("second_scorer", second_scorer_name(study.evaluation))):
            if name is None:
                continue
            try:
                get_scorer(name)
            except UserError as e:
                raise UserError(f"evaluation.{key_name}: {e}") from None
    if study.evaluation.probes:
        from lorafair.probes.run import check_probes

        check_probes(study.evaluation.probes, study.evaluation.n_probe_items)
    check_model_files(study)
    check_available(study.tracking.backend)
    models.load_tokenizer(study.model.source, study.model.trust_remote_code)
    check_model(study, arms)
    if plan.output.is_dir():
        RunDir(plan.output).check_files()
    return plan


def check_output(out: Path) -> None:
    """The output folder is new, empty, or an earlier run of lorafair; never a file or someone's folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output: {out} is a file, not a folder; choose another output folder")
    if out.is_dir() and not RunDir(out).is_run() and any(p.name != ".lock" for p in out.iterdir()):
        raise UserError(f"output: {out} is a folder that is not a lorafair run (no study.yaml) and not empty; "
                        "choose a new or empty folder so nothing in it is overwritten")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"output: cannot write to {out} ({parent} is a file); choose a writable folder with "
                        "output: in the study")
    try:  # a test write, removed at once: a read-only or forbidden folder is found before any work
        with tempfile.TemporaryFile(dir=parent, prefix=".lorafair-write-test"):
            pass
    except OSError as e:
        raise UserError(f"output: cannot write to {parent} ({e.strerror}); choose a writable folder with output: in "
                        "the study or fix the folder's permissions") from None


def check_ray_address(address: str | None, timeout: float = 3.0) -> None:
    """A Ray address given as host:port answers within `timeout` seconds (``auto`` and none are Ray's to find)."""
    if not address or address == "auto" or ":" not in address:
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise UserError(f"execution.address: nothing answers at {address!r} ({getattr(e, 'strerror', None) or e}); "
                        "start the cluster with `ray start --head` or fix the address") from None


def check_sizes(study: Study, arms: list[Arm], analyses: bool, splits: dict | None, data=None) -> None:
    """What training and the analyses need from the corpus: training rows; validation rows for the
    learning-rate search and early stopping; held-out (or validation) rows for the KL and Logit Lens."""
    t, a = study.training, study.analyses
    trains = [arm for arm in arms if kinds.trains(arm)]
    search = t.lr_search.enabled and any(arm.lr is None for arm in trains)
    if splits is None:  # generated corpus: only the fractions can be checked now
        n = {"train": 1, "val": int(data.val_fraction > 0), "heldout": int(data.heldout_fraction > 0)}
    else:
        n = {k: len(v) for k, v in splits.items()}
    if trains and n["train"] == 0:
        raise UserError("data: the corpus leaves no training examples after the validation and held-out splits; "
                        "add examples or lower data.val_fraction and data.heldout_fraction")
    if trains and splits is not None:
        from lorafair.study.config import MAX_STEPS
        from lorafair.training.loop import total_steps

        steps = total_steps(t, n["train"])
        if steps > MAX_STEPS:
            raise UserError(f"training.epochs: {t.epochs:g} epochs of {n['train']} examples are {steps} steps, more "
                            f"than {MAX_STEPS}; lower training.epochs or set training.max_steps")
    if trains and n["val"] == 0 and search:
        raise UserError("data.val_fraction: no validation examples, and the learning-rate search ranks rates by "
                        "validation loss; raise data.val_fraction or set training.lr_search.enabled: false")
    if trains and n["val"] == 0 and t.early_stopping_patience is not None:
        raise UserError("training.early_stopping_patience: early stopping watches the validation loss, but there "
                        "are no validation examples; raise data.val_fraction or remove the key")
    heldout = [s.name for s in stages.analyses() if s.needs_heldout and stages.is_on(s, study, analyses)]
    if heldout and n["heldout"] + n["val"] == 0:
        raise UserError("analyses: the KL and Logit Lens analyses need held-out or validation examples and the "
                        "corpus leaves none; raise data.heldout_fraction or set analyses.kl and analyses.lens: false")


def check_model_files(study: Study) -> None:
    """A local model folder holds a readable config and weights (read: headers only)."""
    path = Path(models.resolve(study.model.source))
    if not path.is_dir():
        return
    config = models.load_config(study.model.source, study.model.trust_remote_code)
    check_weight_files(path, config, study.model.trust_remote_code)
