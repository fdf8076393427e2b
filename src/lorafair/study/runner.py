"""Runs a study, stage after stage; each stage reads what the previous one wrote:

corpus (cached by hash) -> learning-rate search per arm (cached) -> train each arm x seed
(skipped when finished with the same config hash; resumes from its checkpoint) -> evaluate every arm
with the base loaded once and adapters swapped in -> compare arms -> analyses -> report.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import socket
import time
from pathlib import Path
from typing import Callable

import torch

from lorafair.models import sources as models

from lorafair.study import overlap

from lorafair.store import rundir as store
from lorafair.arms.names import bank_name
from lorafair.arms.bank import ArmBank, save_final, wrap_for_training
from lorafair.study.config import Arm, Study, expand_arms, resolved_dict
from lorafair.study.context import Context, make_task, split_corpus
from lorafair.training.encoding import encode
from lorafair.errors import UserError
from lorafair.study.evaluate import EvaluationStage
from lorafair.study.execute import Job, make_executor, raise_failures
from lorafair.training.lr_search import bracket, lr_grid
from lorafair.store.rundir import RunDir
from lorafair.training.loop import Diverged, total_steps, train


class Runner(EvaluationStage):
    def __init__(self, study: Study, log: Callable[[str], None] = print, progress=None):
        self.study = study
        self.arms = expand_arms(study)
        self.rd = RunDir(Path(study.output or Path("runs") / study.name))
        self.log = log
        self.progress = progress
        self.task = make_task(study)
        self.timings: dict[str, float] = {}
        self.main = True  # False in the other processes of a multi-process launch: they write nothing
        self.reused: list[str] = []  # stages that found all their work done by an earlier run
        self._work = 0  # pieces of work done in this process (a corpus built, an arm trained or evaluated)
        self.corpus_hash: str | None = None  # from `corpus()`: part of every arm's and search's hash
        self.bank_loaded: ArmBank | None = None  # the bank evaluation loaded, reused by the later stages

    # ------------------------------------------------------------------ stages

    def run(self, only: list[str] | None = None, force: bool = False, analyses: bool = True, report: bool = True):
        from lorafair.study.preflight import preflight

        plan = preflight(self.study, only, analyses)  # every check before anything is written: fail now, not after hours
        for w in plan.warnings:
            self.log(f"warning: {w}")
        self.ctx = Context(self.study, self.log)
        created = not self.rd.path.exists()
        self.rd.check_writable()
        with self.rd.lock():
            try:
                for p in self.rd.remove_leftovers():
                    self.log(f"removed {p}, left by an interrupted run")
                return self._run_locked(plan.arms, force, analyses, report)
            except (UserError, OSError):
                if created and not self.rd.finished_arms():  # nothing worth keeping: leave no folder behind
                    self.rd.remove()
                raise

    def _run_locked(self, arms: list[Arm], force: bool, analyses: bool, report: bool):
        timings = self.rd.timings_path()
        self._earlier = store.read_json(timings) if timings.is_file() else {}
        self.rd.write_study(resolved_dict(self.study))
        splits, self.corpus_hash = self._stage("corpus", self.corpus)
        self._stage("train", lambda: self.train_all(arms, splits, force))
        results = self._stage("evaluate", lambda: self.evaluate_all(arms, force))
        if self.study.evaluation.counterfactual.enabled:
            from lorafair.study import counterfactual as counterfactual_runner

            self._stage("counterfactual", lambda: counterfactual_runner.evaluate_arms(self, arms, force))
            counterfactual_runner.pool(self, self.arms)
        self._stage("compare", lambda: self.compare(results))
        if self.study.evaluation.audit_scorer:
            self._stage("scorer_audit", self.audit_scorers)
        if analyses:
            self._stage("analyses", lambda: self.analyze(splits))
        store.write_json(timings, {**self.timings, "from_earlier_run": self.reused})
        if report:
            from lorafair.report import build_report

            self._stage("report", lambda: build_report(self.rd.path))
        return results

    def _stage(self, name: str, fn):
        """Run one stage and record its wall time; a stage that only found earlier results keeps the
        earlier run's time and is listed as from an earlier run."""
        t, work = time.perf_counter(), self._work
        out = fn()
        self.timings[name] = round(time.perf_counter() - t, 2)
        earlier = getattr(self, "_earlier", {})
        if self._work == work and name in ("corpus", "train", "evaluate") and name in earlier:
            self.timings[name] = earlier[name]
            self.reused.append(name)
        return out

    def corpus(self) -> tuple[dict[str, list[dict]], str]:
        """The fine-tuning corpus (built once, then read back by content hash) split into train, val
        and held out, and its content hash (assign it to ``corpus_hash`` before hashing arms)."""
        key = self.task.corpus_key() | {"model": [self.study.model.source, self.model_hash],
                                        "scorer": self.study.evaluation.scorer}
        path = self.rd.corpus_path(self.task.data.corpus if hasattr(self.task.data, "corpus") else self.task.name,
                                   store.content_hash(key))
        if path.is_file():
            rows = store.read_jsonl(path)
        else:
            self.log(f"building fine-tuning corpus -> {path}")
            rows = self.task.build_corpus(self.ctx)
            store.write_jsonl(path, rows)
            self._work += 1
        if not rows:
            raise UserError(f"data: the fine-tuning set is empty ({path}); check data.corpus and its options")
        overlap.check_task(self.task, self.study, [r["prompt"] for r in rows])  # the corpus as built
        splits = split_corpus(rows, self.task.data.val_fraction, self.task.data.heldout_fraction)
        if not splits["train"]:
            raise UserError("data: no training examples after the validation/held-out split; lower the fractions")
        self.log(f"corpus: {len(splits['train'])} train, {len(splits['val'])} val, {len(splits['heldout'])} held out")
        return splits, store.content_hash(rows)

    # ------------------------------------------------------------------ training

    @property
    def model_hash(self) -> str:
        """The base model's content hash (cheap after the first time: see models.model_hash)."""
        if not hasattr(self, "_model_hash"):
            self._model_hash = models.model_hash(self.study.model.source)
        return self._model_hash

    def _corpus_hash(self) -> str:
        if self.corpus_hash is None:
            raise RuntimeError("corpus_hash is unset: assign the hash corpus() returns before hashing arms")
        return self.corpus_hash

    def arm_hash(self, arm: Arm, seed: int) -> str:
        t = dataclasses.asdict(self.study.training)
        return store.content_hash({"arm": arm.to_dict(), "seed": seed, "training": t,
                                   "model": [self.study.model.source, self.model_hash], "corpus": self._corpus_hash()})

    def train_all(self, arms: list[Arm], splits, force: bool) -> None:
        """Learning-rate searches (one job per arm that needs one), then trainings (one job per
        arm x seed not finished with the same hash), through the study's executor."""
        self.splits = splits
        todo = []
        for arm in arms:
            if arm.type == "base":
                continue
            for seed in self.study.seeds:
                if not force and self.rd.is_done(arm.name, seed, self.arm_hash(arm, seed)):
                    self.log(f"{arm.name} seed {seed}: finished earlier, skipped (--force retrains)")
                    continue
                if force:
                    self.rd.clear_arm(arm.name, seed)
                todo.append((arm, seed))
        self._work += len(todo)
        searching = list({a.name: a for a, _ in todo if self.needs_search(a)}.values())
        failures = self.executor.run([Job(f"learning-rate search {a.name}", "search", (a.name,)) for a in searching])
        failed = {f.job.args[0] for f in failures}
        failures += self.executor.run([Job(f"train {a.name} seed {s}", "train", (a.name, s)) for a, s in todo
                                       if a.name not in failed])
        raise_failures("train", failures, self.log)

    # ------------------------------------------------------------------ jobs

    @functools.cached_property
    def executor(self):
        study = dataclasses.replace(self.study, output=str(self.rd.path.resolve()))
        return make_executor(study, self.do, self.log)

    def do(self, job: Job):
        """Carry out one job of the study in this process (see lorafair.study.execute)."""
        return getattr(self, f"_job_{job.kind}")(*job.args)

    def _arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    @functools.cached_property
    def encoded(self) -> tuple[list[dict], list[dict]]:
        """(train, validation) examples encoded for training."""
        tok, n = self.ctx.tokenizer, self.study.training.max_length
        return encode(tok, self.splits["train"], n), encode(tok, self.splits["val"], n)

    def _job_search(self, arm_name: str) -> float:
        return self.choose_lr(self._arm(arm_name), *self.encoded)[0]

    def _job_train(self, arm_name: str, seed: int) -> None:
        arm = self._arm(arm_name)
        h = self.arm_hash(arm, seed)
        if self.rd.is_done(arm.name, seed, h):  # an earlier attempt of this job finished it
            return
        lr, search = self.choose_lr(arm, *self.encoded)
        self.train_one(arm, seed, lr, search, *self.encoded, h)

    def _job_evaluate(self, names: tuple[tuple[str, int], ...], bank_arms: tuple[str, ...]) -> None:
        """Evaluate these (arm, seed); the base carries the adapters of `bank_arms` (default: these)."""
        pending = [(self._arm(a), s, self.eval_hash(self._arm(a), s)) for a, s in names]
        arms = [self._arm(a) for a in bank_arms] or list({a.name: a for a, _, _ in pending}.values())
        self.evaluate_pending(pending, arms)

    def _fresh(self, arm: Arm, seed: int):
        model = self.ctx.load_base()
        return wrap_for_training(model, arm, seed)

    def search_key(self, arm: Arm) -> str:
        t = self.study.training
        return store.content_hash({"arm": arm.to_dict(), "search": dataclasses.asdict(t.lr_search),
                                   "corpus": self._corpus_hash(), "training": dataclasses.asdict(t),
                                   "model": [self.study.model.source, self.model_hash]})

    def needs_search(self, arm: Arm) -> bool:
        """Whether the arm's learning rate comes from a search not yet recorded for this key."""
        if arm.lr is not None or not self.study.training.lr_search.enabled:
            return False
        cached = self.rd.read_lr_search(arm.name)
        return not (cached and cached.get("key") == self.search_key(arm))

    def choose_lr(self, arm: Arm, enc_train, enc_val) -> tuple[float, dict | None]:
        """The arm's learning rate: fixed by hand, or the best of a short search on validation loss."""
        t, s = self.study.training, self.study.training.lr_search
        default = t.lr_full if arm.type == "full" else t.lr_lora
        if arm.lr is not None:
            return arm.lr, {"fixed": arm.lr}
        if not s.enabled:
            return default, {"fixed": default, "reason": "lr_search disabled"}
        key = self.search_key(arm)
        cached = self.rd.read_lr_search(arm.name)
        if cached and cached.get("key") == key:
            return cached["chosen"], cached
        if not enc_val:
            raise UserError("data.val_fraction: no validation examples, and the learning-rate search ranks rates by "
                            "validation loss; raise data.val_fraction or set training.lr_search.enabled: false")
        seed = self.study.seeds[0]
        schedule = total_steps(t, len(enc_train))
        steps = min(s.steps, schedule)

        def run(lr: float) -> float | None:
            model = self._fresh(arm, seed)
            try:
                loss = train(model, arm, enc_train, enc_val, t, seed, lr, self.ctx.tokenizer.pad_token_id,
                             steps=schedule, stop_after=steps, keep_best=False,
                             autocast=self.ctx.autocast).final_val_loss
            except Diverged as e:
                self.log(f"{arm.name}: lr {lr:g} diverged at step {e.step}")
                return None
            self.log(f"{arm.name}: lr {lr:g} -> val loss {loss:.4f} after {steps} of {schedule} steps")
            return loss if math.isfinite(loss) else None

        try:
            found = bracket(lr_grid(arm, s), run, s.max_extensions, self.log)
        except UserError as e:
            raise UserError(f"arm {arm.name}: {e}") from None
        for row in found["candidates"]:
            row["steps"] = steps
        record = {"key": key, "arm": arm.name, **found, "seed": seed, "steps": steps, "schedule_steps": schedule,
                  "max_extensions": s.max_extensions,
                  "criterion": f"validation loss after the first {steps} of the final run's {schedule} steps "
                               "(same warm-up, decay, seed and example order)"}
        if not found["interior"]:
            self.log(f"{arm.name}: the best rate {found['chosen']:g} is still at an edge after "
                     f"{s.max_extensions} grid extensions")
        if self.main:
            self.rd.write_lr_search(arm.name, record)
        return found["chosen"], record

    def train_one(self, arm: Arm, seed: int, lr: float, search, enc_train, enc_val, h: str) -> None:
        model = self._fresh(arm, seed)
        if self.main:
            self.rd.write_arm_config(arm.name, seed, {"arm": arm.to_dict(), "seed": seed, "lr": lr, "hash": h,
                                                      "training": dataclasses.asdict(self.study.training)})
        on_step = self.progress(arm.name, seed) if self.progress else None
        tracker = self.tracker(arm, seed, lr) if self.main else None
        hooks = [f for f in (on_step, tracker.log_step if tracker else None) if f is not None]
        finished = False
        try:
            res = train(model, arm, enc_train, enc_val, self.study.training, seed, lr,
                        self.ctx.tokenizer.pad_token_id, checkpoint=self.rd.checkpoint_dir(arm.name, seed),
                        on_step=(lambda row: [f(row) for f in hooks]) if hooks else None, autocast=self.ctx.autocast,
                        checkpoint_key=store.content_hash([h, lr]), log=self.log)
            finished = True
        except Diverged as e:
            if self.main:
                self.rd.write_failed(arm.name, seed, {"step": e.step, "loss": str(e.loss), "lr": lr})
            self.log(f"{arm.name} seed {seed}: STOPPED, loss became {e.loss} at step {e.step}; other arms go on")
            return
        finally:
            if on_step is not None and hasattr(on_step, "close"):
                on_step.close()
            if tracker is not None:
                tracker.close(finished)
        if not self.main:  # another process of a multi-process launch: the main one writes
            return
        self.rd.save_weights(arm.name, seed, lambda p: save_final(model, arm, p), arm.type)
        self.rd.write_train_log(arm.name, seed, res.log, res.val_curve)
        # where it ran: the host, and the GPUs a scheduler (Ray, Slurm) made visible to this process
        where = {"host": socket.gethostname(), "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}
        self.rd.mark_done(arm.name, seed, {"hash": h, "lr_search": search, "model_hash": self.model_hash,
                                           **where, **res.summary()})
        self.log(f"{arm.name} seed {seed}: {res.steps} steps, lr {lr:g}, final loss {res.log[-1]['loss']:.4f}, "
                 f"best val {res.best_val_loss:.4f} at step {res.best_step}"
                 f"{' (weights restored to it)' if res.restored_best else ''}, {res.tokens / max(res.wall_s, 1e-9):.0f} tok/s, "
                 f"{res.wall_s:.0f}s, peak {res.peak_mem_mb:.0f} MB")

    def tracking_params(self) -> dict:
        """What every tracked run records: the study's hash and the precision training ran in."""
        f = self.rd.study_path("json")
        h = store.read_json(f).get("hash") if f.is_file() else None
        return {"study": self.study.name, "study_hash": h,
                "precision": str(self.ctx.autocast or torch.float32).removeprefix("torch.")}

    def tracker(self, arm: Arm, seed: int, lr: float):
        """The study's tracker of one training (None with ``tracking: none``)."""
        from lorafair.training.tracking import open_tracker

        params = {**self.tracking_params(), "arm": arm.name, "seed": seed, "lr": lr, "rank": arm.rank,
                  "variant": arm.variant if arm.type == "lora" else arm.type}
        return open_tracker(self.study.tracking, self.rd.path, self.study.name, arm.name, seed, params)

    def track_decisions(self) -> None:
        """The decisions table into the study's tracker, as a run named ``decisions``."""
        from lorafair.store.tables import decisions_table
        from lorafair.training.tracking import log_decisions

        if self.study.tracking.backend != "none" and self.rd.compare_path().is_file():
            table = decisions_table(store.read_json(self.rd.compare_path()))
            log_decisions(self.study.tracking, self.rd.path, self.study.name, table, self.tracking_params())

    # ------------------------------------------------------------------ evaluation

    def trained(self, arms: list[Arm]) -> list[tuple[Arm, int]]:
        out = []
        for arm in arms:
            if arm.type == "base":
                out.append((arm, self.study.seeds[0]))
                continue
            for seed in self.study.seeds:
                if self.rd.is_done(arm.name, seed, self.arm_hash(arm, seed)):
                    out.append((arm, seed))
        return out

    def bank(self, arms: list[Arm]) -> ArmBank:
        """Base once; every finished LoRA arm x seed attached as an adapter named '<arm>@<seed>'."""
        bank = ArmBank(self.ctx.base_model())
        for arm, seed in self.trained(arms):
            if arm.type == "lora":
                bank.add_lora(bank_name(arm.name, seed), self.rd.weights_dir(arm.name, seed, "lora"))
        return bank

    def shared_bank(self, arms: list[Arm]) -> ArmBank:
        """The bank evaluation loaded (every finished adapter attached), else a new one kept for the
        next stage: the base model is loaded once per run."""
        if self.bank_loaded is None:
            self.bank_loaded = self.bank(arms)
        return self.bank_loaded

    def analyze(self, splits: dict[str, list[dict]]) -> dict:
        """The shift analyses (KL, Logit Lens, weights) on the finished arms of the study's first seed."""
        from lorafair.study.analyses import run_analyses

        seed = self.study.seeds[0]
        done = [arm for arm, s in self.trained(self.arms) if s == seed]
        if not done:
            self.log("analyses: no finished arms; skipped")
            return {}
        return run_analyses(self.study, self.rd, self.ctx, self.task, self.shared_bank(self.arms), done, splits,
                            self.load_full, self.log)

    def analyze_finished(self) -> dict:
        """The analyses alone, on the run directory of a finished study (``lorafair analyze``)."""
        self.ctx = Context(self.study, self.log)
        with self.rd.lock():
            splits, self.corpus_hash = self.corpus()
            return self.analyze(splits)

    def load_full(self, seed: int):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.rd.weights_dir("full", seed, "full"),
                                                    dtype=torch.float32).to(models.device()).eval()


def run_study(study: Study, only: list[str] | None = None, force: bool = False, analyses: bool = True,
              report: bool = True, log: Callable[[str], None] = print, progress=None) -> Path:
    """Run ``study`` (train, evaluate, compare, analyse, report; finished work is kept) and return
    its run directory: what ``lorafair run`` and ``lorafair.run`` both call."""
    runner = Runner(study, log=log, progress=progress)
    runner.run(only=only, force=force, analyses=analyses, report=report)
    return runner.rd.path


__all__ = ["Runner", "run_study"]
