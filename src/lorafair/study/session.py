"""The session of one run: what every stage reads (the study, its run directory, the context tasks
share, the task, the expanded arms, the log), the keys its results are cached under, and the arm
bank loaded once per run. Stages are plain functions of a session that return their results
(lorafair.study.stages); a session is built by :func:`open_session` and extended with
`dataclasses.replace` (the corpus once built, the executor), never patched from outside.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lorafair.arms import kinds
from lorafair.arms.bank import ArmBank
from lorafair.arms.names import bank_name
from lorafair.models import sources as models
from lorafair.store import keys
from lorafair.store.rundir import RunDir
from lorafair.study.config import Arm, Study, expand_arms
from lorafair.study.context import Context, make_task
from lorafair.tasks import Task


@dataclass(frozen=True)
class Corpus:
    """The fine-tuning corpus split into train, val and held out, and its content hash."""

    splits: dict[str, list[dict]]
    hash: str


@dataclass(frozen=True)
class Request:
    """What a command asked of a run: the arms (all, or those of --arms), whether to redo finished
    work, and whether the analyses and the report run."""

    arms: list[Arm]
    force: bool = False
    analyses: bool = True
    report: bool = True


@dataclass
class Tally:
    """Pieces of work done in this process (a corpus built, an arm trained or evaluated): a stage
    that adds none only found earlier results."""

    work: int = 0


@dataclass
class BankSlot:
    """The arm bank evaluation loaded, kept for the later stages: the base is loaded once per run."""

    bank: ArmBank | None = None


def output_path(study: Study) -> Path:
    return Path(study.output or Path("runs") / study.name)


def measured_settings(evaluation) -> dict:
    """What in the evaluation settings determines results (how arms share batches, the margins and
    primary metrics, which only decide, whether the scorer is audited, the counterfactual settings,
    cached on their own, and how many seeds ``run --until-decided`` adds do not)."""
    d = dataclasses.asdict(evaluation)
    for k in ("mix_arms", "margins", "primary", "audit_scorer", "counterfactual", "sequential"):
        d.pop(k, None)
    return d


@dataclass
class Session:
    study: Study
    rd: RunDir
    ctx: Context
    task: Task
    arms: list[Arm]
    log: Callable[[str], None]
    progress: Callable | None = None  # (arm, seed) -> on_step callback, e.g. a progress bar
    main: bool = True  # False in the other processes of a multi-process launch: they write nothing
    corpus: Corpus | None = None  # set by replace() once the corpus stage built it
    executor: Any = None  # where jobs run (lorafair.study.execute), set by replace()
    slot: BankSlot = field(default_factory=BankSlot)
    tally: Tally = field(default_factory=Tally)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    # ------------------------------------------------------------------ keys (lorafair.store.keys)

    @functools.cached_property
    def model_hash(self) -> str:
        """The base model's content hash (cheap after the first time: see models.model_hash), with
        '@bfloat16' appended when the run computes in bf16 (float32 runs keep their hashes)."""
        import torch

        h = models.model_hash(self.study.model.source)
        dtype = models.pick_dtype(self.study.model.precision)  # bf16 arms and evaluations are cached apart
        return h if dtype == torch.float32 else f"{h}@{str(dtype).removeprefix('torch.')}"

    @property
    def corpus_hash(self) -> str:
        if self.corpus is None:
            raise RuntimeError("the session has no corpus yet: replace(session, corpus=...) before hashing arms")
        return self.corpus.hash

    def corpus_key(self) -> str:
        return keys.corpus_key(self.task.corpus_key(), self.study.model.source, self.model_hash,
                               self.study.evaluation.scorer)

    def train_key(self, arm: Arm, seed: int) -> str:
        return keys.train_key(arm.to_dict(), seed, dataclasses.asdict(self.study.training), self.study.model.source,
                              self.model_hash, self.corpus_hash)

    def search_key(self, arm: Arm) -> str:
        t = self.study.training
        return keys.search_key(arm.to_dict(), dataclasses.asdict(t.lr_search), dataclasses.asdict(t),
                               self.study.model.source, self.model_hash, self.corpus_hash)

    def _trained_key(self, arm: Arm, seed: int) -> str | None:
        return self.train_key(arm, seed) if kinds.trains(arm) else None

    def eval_key(self, arm: Arm, seed: int) -> str:
        return keys.evaluation_key(self._trained_key(arm, seed), self.model_hash,
                                   measured_settings(self.study.evaluation), self.task.corpus_key())

    def counterfactual_key(self, arm: Arm, seed: int) -> str:
        return keys.counterfactual_key(self._trained_key(arm, seed), self.model_hash,
                                       dataclasses.asdict(self.study.evaluation.counterfactual), self.study.model.source)

    @functools.cached_property
    def encoded(self) -> tuple[list[dict], list[dict]]:
        """(train, validation) examples of the corpus encoded for training."""
        from lorafair.training.encoding import encode

        if self.corpus is None:
            raise RuntimeError("the session has no corpus yet: replace(session, corpus=...) before training")
        tok, n = self.ctx.tokenizer, self.study.training.max_length
        return encode(tok, self.corpus.splits["train"], n), encode(tok, self.corpus.splits["val"], n)

    # ------------------------------------------------------------------ arms and models

    def trained(self, arms: list[Arm]) -> list[tuple[Arm, int]]:
        """The finished (arm, seed) of `arms`: base once (first seed), every trained arm x seed done
        with its current key."""
        out = []
        for arm in arms:
            if not kinds.trains(arm):
                out.append((arm, self.study.seeds[0]))
                continue
            for seed in self.study.seeds:
                if self.rd.is_done(arm.name, seed, self.train_key(arm, seed)):
                    out.append((arm, seed))
        return out

    def bank(self, arms: list[Arm]) -> ArmBank:
        """Base once; every finished LoRA arm x seed attached as an adapter named '<arm>@<seed>'."""
        bank = ArmBank(self.ctx.base_model())
        for arm, seed in self.trained(arms):
            if kinds.is_lora(arm):
                bank.add_lora(bank_name(arm.name, seed), self.rd.weights_dir(arm.name, seed, kinds.weights_kind(arm)))
        return bank

    def shared_bank(self, arms: list[Arm]) -> ArmBank:
        """The bank evaluation loaded (every finished adapter attached), else a new one kept for the
        next stage."""
        if self.slot.bank is None:
            self.slot.bank = self.bank(arms)
        return self.slot.bank

    def load_full(self, seed: int):
        """The fully fine-tuned model of `seed`, float32, on the device, in eval mode."""
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.rd.weights_dir("full", seed, "full"),
                                                    dtype=torch.float32).to(models.device()).eval()


def open_session(study: Study, log: Callable[[str], None], progress: Callable | None = None,
                 main: bool = True, task: Task | None = None) -> Session:
    """A session of `study` (its tokenizer loaded; no corpus yet); `task`: the study's task when
    already built."""
    return Session(study=study, rd=RunDir(output_path(study)), ctx=Context(study, log),
                   task=task if task is not None else make_task(study), arms=expand_arms(study), log=log,
                   progress=progress, main=main)
