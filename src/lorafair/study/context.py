"""What a run is made of before anything is trained: the context tasks share (tokenizer, scorers,
base model on demand), the task built from the study, the check of every LoRA arm against the
model's layers, the corpus split and the arms a command asks for."""

from __future__ import annotations

from typing import Callable

import torch

from lorafair.models import precision
from lorafair.models import sources as models

from lorafair.store import rundir as store
from lorafair.arms import kinds
from lorafair.arms.bank import check_arm
from lorafair.study.config import Arm, Study, expand_arms, second_scorer_name
from lorafair.study.schema import build_options
from lorafair.errors import UserError
from lorafair.tasks import Task, get_task


class Context:
    """What tasks need from the run: the study, tokenizer, scorer, and the base model on demand."""

    eval_seed = 0  # the random stream of evaluation sampling: the same for every arm

    def __init__(self, study: Study, log: Callable[[str], None]):
        self.study = study
        self.log = log
        self.tokenizer = models.load_tokenizer(study.model.source, study.model.trust_remote_code)
        self._base = None
        self._scorer = None
        self.autocast = models.pick_dtype(study.model.precision)  # the dtype every model of the run computes in
        precision.set_session(study.model.precision)

    def load_base(self):
        m = models.load_model(self.study.model.source, self.study.model.trust_remote_code, seed=0)
        return m.to(models.device())

    def base_model(self):
        if self._base is None:
            self._base = precision.for_inference(self.load_base(), self.autocast).eval()
        return self._base

    @property
    def scorer(self):
        if self._scorer is None:
            from lorafair.scorers import get_scorer

            self._scorer = get_scorer(self.study.evaluation.scorer)
        return self._scorer

    @property
    def second_scorer(self):
        """The scorer giving a second opinion on the same generations (evaluation.second_scorer), or None."""
        name = second_scorer_name(self.study.evaluation)
        if name is None:
            return None
        from lorafair.scorers import get_scorer

        return get_scorer(name)


def make_task(study: Study) -> Task:
    cls = get_task(study.task.name)
    src = study.source_path or "<study>"
    task = cls(build_options(cls.Options, study.task.options, src, "task.options"),
               build_options(cls.DataOptions, study.data, src, "data"))
    task.check_study(study)
    return task


def check_model(study: Study, arms: list[Arm] | None = None) -> None:
    """Check every LoRA arm's rank and target modules against the model's layers.

    Builds the model on the meta device (no weights read), so it is cheap even for large models.
    """
    lora = [a for a in (arms if arms is not None else expand_arms(study)) if kinds.is_lora(a)]
    if not lora:
        return
    from transformers import AutoModelForCausalLM

    trc = study.model.trust_remote_code
    cfg = models.load_config(study.model.source, trc)
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trc)
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        raise UserError(f"model.source: {study.model.source!r} has a config that does not build a causal LM "
                        f"({type(e).__name__}); check its config.json") from None
    src = study.source_path or "<study>"
    for arm in lora:
        try:
            check_arm(skeleton, arm)
        except UserError as e:
            raise UserError(f"{src}: arms: {e}") from None


def split_corpus(rows: list[dict], val_fraction: float, heldout_fraction: float) -> dict[str, list[dict]]:
    """Deterministic split by a hash of each example, independent of corpus order."""
    out = {"train": [], "val": [], "heldout": []}
    for r in rows:
        u = int(store.content_hash([r["prompt"], r["completion"]], 8), 16) / 16**8
        key = "val" if u < val_fraction else "heldout" if u < val_fraction + heldout_fraction else "train"
        out[key].append(r)
    return out


def select_arms(arms: list[Arm], only: list[str] | None) -> list[Arm]:
    """The arms named by --arms (all when None)."""
    if not only:
        return arms
    names = {a.name for a in arms}
    for n in only:
        if n not in names:
            raise UserError(f"--arms: no arm {n!r} in this study; arms: {', '.join(sorted(names))}")
    return [a for a in arms if a.name in only]
