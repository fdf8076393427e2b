"""The evaluation stage of a run (a part of `Runner`): which finished arms need evaluating, the
evaluation itself with the base model loaded once and adapters swapped in, the comparison of arms
with its equivalence decisions, and the audit of the scorers the evaluations used."""

from __future__ import annotations

import dataclasses
import time

import pandas as pd

from lorafair.stats import equivalence

from lorafair.store import rundir as store
from lorafair.arms.names import bank_name
from lorafair.study.config import Arm
from lorafair.study.execute import Job, raise_failures


class EvaluationStage:
    """Mixed into `Runner`: uses its study, run directory, task, context, log, arm hashes and bank."""

    def eval_hash(self, arm: Arm, seed: int) -> str:
        return store.content_hash({"train": self.arm_hash(arm, seed) if arm.type != "base" else ["base", self.model_hash],
                                   "eval": _eval_key(self.study.evaluation), "task": self.task.corpus_key()})

    def _eval_status(self, arms: list[Arm], force: bool):
        """(results read back from earlier evaluations, [(arm, seed, hash)] still to evaluate)."""
        results, pending = {}, []
        for arm, seed in self.trained(arms):
            h = self.eval_hash(arm, seed)
            cached = self.rd.read_eval(arm.name, seed, self.task.name)
            if cached is not None and cached[0].get("hash") == h and not force:
                results[(arm.name, seed)] = cached[1]
            else:
                pending.append((arm, seed, h))
        return results, pending

    def evaluate_all(self, arms: list[Arm], force: bool) -> dict[tuple[str, int], pd.DataFrame]:
        """Evaluate every finished arm x seed not evaluated with the same settings. Locally one job
        evaluates them all (base and LoRA arms share batches); on Ray, full fine-tuning arms are
        jobs of their own and the rest one job."""
        results, pending = self._eval_status(arms, force)
        self._work += len(pending)
        if not pending:
            return results
        if self.executor.name == "local":
            groups = [pending]
        else:
            groups = [[p for p in pending if p[0].type != "full"]] + [[p] for p in pending if p[0].type == "full"]
        everyone = tuple(a.name for a in arms)
        jobs = [Job(f"evaluate {', '.join(f'{a.name}@{s}' for a, s, _ in g)}", "evaluate",
                    (tuple((a.name, s) for a, s, _ in g), everyone if len(groups) == 1 else ()))
                for g in groups if g]
        raise_failures("evaluate", self.executor.run(jobs), self.log)
        if self.executor.name == "local":
            return results | self._evaluated
        return self._eval_status(arms, False)[0]

    def evaluate_pending(self, pending: list[tuple[Arm, int, str]], arms: list[Arm]) -> dict[tuple[str, int], pd.DataFrame]:
        """Evaluate these (arm, seed, hash) with the base loaded once (carrying the finished
        adapters of `arms`) and write each one's results."""
        results = self._evaluated = {}
        bank = self.bank(arms) if pending else None
        # base and LoRA arms generate together, rows of every arm in each batch
        t = time.perf_counter()
        mix = []
        if bank is not None and self.study.evaluation.mix_arms:
            mix = bank.mixable([bank_name(a.name, s) for a, s, _ in pending])
        shared = self.task.generate_many(self.ctx, bank, mix) if mix else {}
        shared_s = (time.perf_counter() - t) / max(1, len(shared))
        if shared:
            self.log(f"generated for {len(shared)} arms together in {time.perf_counter() - t:.0f}s")
        for arm, seed, h in pending:
            results[(arm.name, seed)] = self._evaluate_one(bank, arm, seed, h, shared, shared_s)
        self.bank_loaded = bank
        return results

    def _evaluate_one(self, bank, arm: Arm, seed: int, h: str, shared: dict, shared_s: float) -> pd.DataFrame:
        """One arm and seed: the task's evaluation (and the probes), written with its hash; returns its rows."""
        t = time.perf_counter()
        name = bank_name(arm.name, seed)
        if arm.type == "full":
            bank.add_full(self.load_full(seed))
        with bank.use(name) as model:
            kw = {"generated": shared[name]} if name in shared else {}
            res = self.task.evaluate(self.ctx, model, arm.name, **kw).check()
            if self.study.evaluation.probes:
                from lorafair.probes.run import evaluate_probes

                p_summary, p_rows = evaluate_probes(self.ctx, model, self.study.evaluation.probes)
                p_summary.update(hash=h, arm=arm.name, seed=seed)
                self.rd.write_eval(arm.name, seed, "probes", p_summary, p_rows)
        wall = time.perf_counter() - t + (shared_s if name in shared else 0.0)
        summary = {**res.summary(), "hash": h, "arm": arm.name, "seed": seed, "wall_s": round(wall, 2)}
        self.rd.write_eval(arm.name, seed, self.task.name, summary, res.rows)
        self.log(f"evaluated {arm.name} seed {seed} in {summary['wall_s']:.0f}s")
        return res.rows

    def compare(self, results) -> dict:
        res = self.task.compare(self.ctx, results).check()
        margins = {**self.task.default_margins(), **self.study.evaluation.margins}
        out = res.to_json(margins, equivalence.decide_all(res.minus_full, margins))
        store.write_json(self.rd.compare_path(), out)
        return out

    def audit_scorers(self) -> dict:
        """The audit of every scorer the evaluation summaries name (cached per scorer), copied into the run."""
        from lorafair.scorers.audit import cached_audits, scorer_infos

        infos = scorer_infos(self.rd.evals(self.task.name).values())
        if not infos:
            return {}
        out = cached_audits(infos, self.study.evaluation.threshold, self.log)
        store.write_json(self.rd.scorer_audit_path(), out)
        return out


def _eval_key(e) -> dict:
    """What in the evaluation settings determines results (how arms share batches and whether the
    scorer is audited do not)."""
    d = dataclasses.asdict(e)
    d.pop("mix_arms", None)
    d.pop("margins", None)  # margins decide, they do not change what is measured
    d.pop("audit_scorer", None)
    d.pop("counterfactual", None)  # computed and cached on its own (counterfactual_runner)
    d.pop("sequential", None)  # how many seeds to add, not how a seed is measured
    return d
