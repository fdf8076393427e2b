"""Sequential lending decisions: the model is the bank's policy in the two-group credit environment.

Fine-tuning data: (observation text, " approve" / " deny") pairs from rollouts of a reference
policy (`options.reference`: "equal-opportunity", the default, re-optimised at every step on the
current group distributions; "equal-opportunity-fixed", its thresholds fixed at the start; or
"max-profit"; see `policies.py`). Burn-in steps, in which the environment approves everyone,
are not the reference's decisions and are left out of the corpus. Evaluation: every arm (the untouched base included) is the policy of
`options.n_envs` parallel environments for `options.T` steps each, once per evaluation seed; the
environments' random streams are the same for every arm and for the reference policies.

The LLM policy: each step, the observations of all environments are written as text and scored in
one batch with `lm.choice_logprobs`; the model approves when log p(" approve") > log p(" deny")
(greedy, so the decisions of a fixed model are deterministic). The same batch also scores each
applicant with only the group words swapped, for the counterfactual flip rate.

Case numbers (`options.case_numbers`, on by default): each text starts with "Application NNNN.",
a 4-digit number that is a fixed hash of (seed, environment, step) and carries no information.
Without it the observation space has only 2 x C distinct texts, and the corpus split (by a hash of
prompt and completion) would keep whole observations, e.g. every "group B, bin 3 -> approve",
out of training; with it the split falls on individual applications.

Measures (per environment, then over environments):
    * per (env_seed, env, step, group): cumulative applicants ``n``, ``approved``, would-repay
      ``pos``, approved would-repay ``tp``, ``approval_rate``, ``tpr``, the group's population
      ``mean_bin`` (credit score) after the step, cumulative ``profit`` from the group's loans;
      these are the evaluation rows (written as eval/lending.parquet);
    * final gaps (group 0 minus group 1) of approval_rate, tpr, mean_bin and profit in each
      environment at its last step; an arm's value is the mean over environments, its interval a
      percentile bootstrap over environments; ``profit`` is the bank's total per environment;
    * ``flip_rate``: share of decisions that change when only the group words are swapped, and
      ``mean_abs_delta_p``, the mean |Δ p(approve)|: per environment, then over environments
      (the environment is the resampling unit of every measure: its decisions are serially
      dependent, so they are not independent units).
``compare`` pools training seeds and environments as a crossed design (`lorafair.stats.intervals`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lorafair.models import lm

from lorafair.stats import intervals as stats
from lorafair.errors import UserError
from lorafair.stats.results import CompareResult, EvalResult
from lorafair.study.schema import key
from lorafair.tasks import CorpusOptions, Task, register
from lorafair.tasks.lending.env import (
    DEFAULT_NAMES,
    DEFAULT_TEMPLATE,
    LendingParams,
    Obs,
    PolicyFn,
    describe,
    rollout,
)
from lorafair.tasks.lending.measures import FINAL, PER_DECISION, env_series, final_by_env, summarize
from lorafair.tasks.lending.policies import (
    DECISION_WORDS,
    DecisionLog,
    EqualOpportunityOracle,
    Threshold,
    equal_opportunity_thresholds,
    max_profit_threshold,
    threshold_policy,
)

REFERENCES = ("equal-opportunity", "equal-opportunity-fixed", "max-profit")
@dataclass
class LendingOptions:
    env: dict = field(default_factory=dict)  # LendingParams fields; empty: the published defaults
    groups: list[str] = field(default_factory=lambda: list(DEFAULT_NAMES))
    template: str = DEFAULT_TEMPLATE  # fields {group}, {bin} (1-based), {n_bins}
    case_numbers: bool = True  # prefix "Application NNNN." (see the module docstring)
    T: int = key(1000, "[1, 1000000]")  # steps of every environment per rollout (decisions: T x n_envs)
    n_envs: int = key(20, "[1, 100000]")  # parallel environments, decided in one batch per step
    eval_seeds: list[int] = key(accepts=">= 0", nonempty=True, factory=lambda: [0])  # the same for every arm
    reference: str = key("equal-opportunity", one_of=REFERENCES)  # policy behind the fine-tuning data


CONSTANT_SHARE = 0.99  # competence: a policy deciding one way this often after burn-in is constant


@dataclass
class LendingData(CorpusOptions):
    n_examples: int = key(2000, "[1, 10000000]")  # decisions of the reference policy, in step-major order
    seed: int = key(1234, ">= 0")  # rollout seed of the fine-tuning data (use one not in eval_seeds)


# ----------------------------------------------------------------------------- text


def case_numbers(seed: int, n_envs: int, step: int) -> np.ndarray:
    """4-digit application numbers of one step's applicants, [n_envs] int64: a fixed
    multiplicative hash of (seed, env, step) into 1000..9999."""
    env = np.arange(n_envs, dtype=np.int64)
    key = (int(seed) * 7919 + env * 104_729 + int(step) * 1_299_709 + 12_345) % (1 << 32)
    return 1000 + (key * 2_654_435_761 % (1 << 32)) % 9000


def observation_text(obs: Obs, o: LendingOptions, n_bins: int, case: int | None = None,
                     swap: bool = False) -> str:
    """The prompt for one applicant (group words swapped when ``swap``)."""
    ob = {"group": 1 - int(obs["group"]) if swap else int(obs["group"]), "bin": int(obs["bin"])}
    text = describe(ob, o.groups, o.template, n_bins)
    return f"Application {case}. {text}" if o.case_numbers and case is not None else text


def decision_ids(tokenizer) -> list[int]:
    """Token ids of [" deny", " approve"]; each must be one token."""
    ids = []
    for w in DECISION_WORDS:
        toks = tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise UserError(f"task lending: decision word {w!r} is {len(toks)} tokens for this "
                            "tokenizer; the lending task needs single-token decisions, use a model "
                            "whose tokenizer has it as one token")
        ids.append(int(toks[0]))
    return ids


# ----------------------------------------------------------------------------- policies


@torch.no_grad()
def llm_decide(model, tokenizer, texts: list[str], ids: list[int], batch_size: int = 32
               ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decisions for prompts: (approve [n] int64, p(approve | approve or deny) [n])."""
    lp = lm.choice_logprobs(model, tokenizer, texts, ids, batch_size=batch_size)  # [n, 2]
    diff = (lp[:, 1] - lp[:, 0]).double()
    return (diff > 0).long().numpy(), torch.sigmoid(diff).numpy()


def llm_policy(model, tokenizer, o: LendingOptions, n_bins: int, seed: int, ids: list[int],
               log: DecisionLog, batch_size: int = 32) -> PolicyFn:
    """A batch policy for `rollout`: the step's applicants and their swapped twins in one batch.
    Step t is the t-th call; decisions are appended to ``log``."""
    state = {"step": 0}

    def policy(batch: list[Obs]) -> list[int]:
        cases = case_numbers(seed, len(batch), state["step"])
        texts = [observation_text(ob, o, n_bins, c) for ob, c in zip(batch, cases)]
        texts += [observation_text(ob, o, n_bins, c, swap=True) for ob, c in zip(batch, cases)]
        a, p = llm_decide(model, tokenizer, texts, ids, batch_size)
        n = len(batch)
        log.add(a[:n], a[n:], p[:n], p[n:])
        state["step"] += 1
        return [int(x) for x in a[:n]]

    return policy


def reference_thresholds(name: str, params: LendingParams) -> tuple[Threshold, Threshold] | EqualOpportunityOracle:
    if name == "max-profit":
        th = max_profit_threshold(params)
        return th, th
    if name == "equal-opportunity":
        return EqualOpportunityOracle(params)
    if name == "equal-opportunity-fixed":
        return equal_opportunity_thresholds(params)
    raise UserError(f"task.options.reference: {name!r} is not one of {', '.join(REFERENCES)}")


# ----------------------------------------------------------------------------- task


@register("lending")
class Lending(Task):
    Options = LendingOptions
    DataOptions = LendingData
    report_hook = "lorafair.tasks.lending.report:figures"
    PRIMARY = ("tpr_gap", "profit")  # equal opportunity, the fine-tuning target, and what it costs

    def __init__(self, options: LendingOptions, data: LendingData):
        super().__init__(options, data)
        o = options
        self.params = LendingParams.from_dict(o.env)
        if len(o.groups) != 2 or len(set(o.groups)) != 2:
            raise UserError(f"task.options.groups: give two different group names, got {o.groups!r}")
        for key in ("T", "n_envs"):
            if getattr(o, key) < 1:
                raise UserError(f"task.options.{key}: must be >= 1, got {getattr(o, key)}")
        if self.params.burnin >= o.T:
            raise UserError(f"task.options.T: {o.T} steps end within the environment's burn-in ({self.params.burnin} "
                            "steps in which everyone is approved); raise T or lower task.options.env.burnin")
        if not o.eval_seeds:
            raise UserError("task.options.eval_seeds: empty; give at least one seed, e.g. [0]")
        if data.n_examples < 1:
            raise UserError(f"data.n_examples: must be >= 1, got {data.n_examples}")
        try:
            describe({"group": 0, "bin": 0}, o.groups, o.template, self.params.n_bins)
        except (KeyError, IndexError, ValueError) as e:
            raise UserError(f"task.options.template: {o.template!r} cannot be filled ({e!r}); "
                            "use only the fields {group}, {bin} and {n_bins}") from None
        self.thresholds = reference_thresholds(o.reference, self.params)
        self._references: dict | None = None

    # ------------------------------------------------------------------ rollouts

    def _rollouts(self, make_policy) -> pd.DataFrame:
        """Every evaluation seed's rows (env_series + env_seed), flips and |Δp| included."""
        o, frames = self.options, []
        for s in o.eval_seeds:
            log = DecisionLog()
            df = rollout(make_policy(s, log), o.n_envs, o.T, s, self.params)
            lg = log.rows_of(df)  # the policy's decisions, in the frame's order; burn-in rows have none
            decided = (df["call"] >= 0).to_numpy()
            df["decided"] = decided.astype(np.float64)
            df["flip"] = 0.0
            df.loc[decided, "flip"] = (lg[:, 0] != lg[:, 1]).astype(np.float64)
            if not np.isnan(lg[:, 2]).all():  # a threshold policy has no probabilities
                df["abs_delta_p"] = 0.0
                df.loc[decided, "abs_delta_p"] = np.abs(lg[:, 2] - lg[:, 3])
            frames.append(env_series(df).assign(env_seed=int(s)))
        rows = pd.concat(frames, ignore_index=True)
        cols = ["env_seed", "env", "step", "group"]
        return rows[cols + [c for c in rows.columns if c not in cols]]

    def reference_results(self, ctx) -> dict:
        """Summaries of the reference policies on the evaluation seeds (computed once)."""
        if self._references is None:
            n_boot = ctx.study.evaluation.bootstrap
            self._references = {}
            for name in REFERENCES:
                ths = reference_thresholds(name, self.params)
                rows = self._rollouts(lambda s, lg, ths=ths: threshold_policy(ths, s, lg))
                res = summarize(rows, n_boot, self.options.groups)
                start = ths(np.asarray(self.params.init_dists)) if callable(ths) else ths
                res["thresholds"] = [{"cutoff": t.cutoff, "p_cutoff": t.p_cutoff} for t in start]
                res["thresholds_reoptimised"] = callable(ths)  # the thresholds above are those at the start
                self._references[name] = {"summary": res, "rows": rows}
        return self._references

    def evaluate(self, ctx, model, arm: str) -> EvalResult:
        o, tok = self.options, ctx.tokenizer
        ids = decision_ids(tok)
        bs = ctx.study.evaluation.batch_size
        model.eval()
        rows = self._rollouts(
            lambda s, lg: llm_policy(model, tok, o, self.params.n_bins, s, ids, lg, bs))
        s = summarize(rows, ctx.study.evaluation.bootstrap, o.groups)
        extras = {k: v for k, v in s.items() if k not in ("metrics", "groups", "warnings")}
        extras.update(T=o.T, n_envs=o.n_envs, eval_seeds=list(o.eval_seeds), params=self.params.to_dict(),
                      reference={k: v["summary"] for k, v in self.reference_results(ctx).items()})
        return EvalResult(metrics=s["metrics"], rows=rows, groups=s["groups"], warnings=s.get("warnings", []),
                          extras=extras)

    # ------------------------------------------------------------------ corpus and KL prompts

    def _reference_frame(self, seed: int, n: int) -> pd.DataFrame:
        """At least ``n`` decisions of the fine-tuning reference, step-major, first ``n`` kept; burn-in
        rows (approvals the reference did not decide) left out."""
        o = self.options
        steps = self.params.burnin + -(-n // o.n_envs)
        pol = threshold_policy(self.thresholds, seed)
        df = rollout(pol, o.n_envs, steps, seed, self.params)
        return df[df["call"] >= 0].sort_values(["step", "env"], kind="stable").head(n)

    def _texts(self, df: pd.DataFrame, seed: int) -> list[str]:
        o, nb = self.options, self.params.n_bins
        cases = {t: case_numbers(seed, o.n_envs, t) for t in df["step"].unique()}
        return [observation_text({"group": g, "bin": b}, o, nb, int(cases[t][e]))
                for g, b, t, e in zip(df["group"], df["bin"], df["step"], df["env"])]

    def build_corpus(self, ctx) -> list[dict]:
        decision_ids(ctx.tokenizer)
        d = self.data
        df = self._reference_frame(d.seed, d.n_examples)
        texts = self._texts(df, d.seed)
        return [{"prompt": p, "completion": DECISION_WORDS[int(a)], "group": int(g), "bin": int(b)}
                for p, a, g, b in zip(texts, df["action"], df["group"], df["bin"])]

    def evaluation_items(self, study) -> list[str]:
        return [f"environment stream {int(s)}" for s in self.options.eval_seeds]

    def finetune_items(self, study) -> list[str]:
        return [f"environment stream {int(self.data.seed)}"]

    def disjoint_hint(self) -> str:
        return ("choose data.seed (the fine-tuning rollouts' stream) outside task.options.eval_seeds, "
                "else the arms are evaluated on the applicants they trained on")

    def kl_prompts(self, ctx) -> list[str]:
        n = ctx.study.analyses.n_sequences
        seed = int(self.options.eval_seeds[0])
        return self._texts(self._reference_frame(seed, n), seed)

    # ------------------------------------------------------------------ across arms

    def competence(self, results: dict[tuple[str, int], pd.DataFrame], pooled: dict[str, dict]
                   ) -> dict[str, str]:
        """A policy that approves (or denies) more than ``CONSTANT_SHARE`` of the applicants it decides
        on after burn-in, over all its seeds, has learnt a constant rule, not a credit policy."""
        out = {}
        for arm in sorted({a for a, _ in results} - {"base"}):
            why = self._constant([df for (a, _), df in results.items() if a == arm])
            if why:
                out[arm] = why
        return out

    def seed_competence(self, results: dict[tuple[str, int], pd.DataFrame]) -> dict[tuple[str, int], str]:
        """The constant-policy check of :meth:`competence` on each trained seed alone."""
        return {key: "a constant policy" for key, df in results.items()
                if key[0] != "base" and self._constant([df])}

    def _constant(self, frames: list[pd.DataFrame]) -> str | None:
        """Why the decisions of ``frames`` (after burn-in) are a constant policy, or None."""
        frames = [df for df in frames if {"step", "approved", "n"} <= set(df)]
        if not frames:
            return None
        own = pd.concat(frames)
        own = own[own["step"] >= self.params.burnin]
        n = float(own["n"].sum())
        share = float(own["approved"].sum()) / n if n else float("nan")
        if n and (share > CONSTANT_SHARE or share < 1 - CONSTANT_SHARE):
            return (f"a constant policy: it {'approves' if share > 0.5 else 'denies'} "
                    f"{100 * max(share, 1 - share):.1f}% of applicants after burn-in")
        return None

    def compare(self, ctx, results: dict[tuple[str, int], pd.DataFrame]) -> CompareResult:
        """Per arm: every headline measure pooled over training seeds, and each arm minus full paired
        over seeds and environments, with crossed-design intervals (``stats``): environments share
        their random streams across arms and seeds, so they are the crossed unit. Also the
        reference policies' values."""
        tables = {}
        for (arm, seed), rows in results.items():
            f = final_by_env(rows)
            f["unit"] = f["env_seed"].astype(str) + ":" + f["env"].astype(str)
            tables.setdefault(arm, []).append(f.assign(seed=seed))
        tables = {arm: pd.concat(fs, ignore_index=True) for arm, fs in tables.items()}
        measures = {**FINAL, **PER_DECISION}
        out = CompareResult(pooled={}, extras={"reference": {}, "unit": "environments"})
        for name, (col, hib, unit) in measures.items():
            cells = {arm: stats.cell_table(t.dropna(subset=[col]), [col], "unit")
                     for arm, t in tables.items() if col in t.columns and t[col].notna().any()}
            for arm, c in cells.items():
                out.pooled.setdefault(arm, {})[name] = {**stats.crossed_interval(c[0]),
                                                           "higher_is_better": hib, "unit": unit}
                if arm != "full" and "full" in cells:
                    out.minus_full.setdefault(arm, {})[name] = {
                        **stats.crossed_difference(*stats.pair_cells(c, cells["full"], arm == "base")),
                        "higher_is_better": hib, "unit": f"difference in {unit} (arm − full)"}
        for arm, t in tables.items():
            out.pooled.setdefault(arm, {})["n_seeds"] = int(t["seed"].nunique())
        for name, ref in self.reference_results(ctx).items():
            out.extras["reference"][name] = {k: ref["summary"]["metrics"][k] for k in FINAL}
        return out

    def default_margins(self) -> dict[str, float]:
        """Rates and flips: absolute; credit bins: a quarter bin; profit: 2% of the most an
        environment can lose (T loans of ``loan_amount``)."""
        money = 0.02 * self.options.T * self.params.loan_amount
        return {"approval_gap": 0.05, "tpr_gap": 0.05, "mean_bin_gap": 0.25, "profit_gap": money,
                "profit": money, "flip_rate": 0.02, "mean_abs_delta_p": 0.02}
