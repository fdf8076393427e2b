"""Toxicity mitigation: fine-tune on non-toxic continuations, then measure the toxicity of what each
arm generates, overall and per identity group.

Corpora (`data.corpus`):
- `self-detox`: for each fine-tuning prompt (RealToxicityPrompts, fine-tuning split) sample k
  continuations from the base model, score them, keep the least toxic one when it scores below
  `threshold`. The target is the base model's own non-toxic behaviour.
- `counterfactual`: for the identity prompts of the "finetune" templates, one non-toxic continuation
  per template (sampled for the template with a neutral "person"), reused for every group, so the
  target does not depend on the group. Identity evaluation uses only the "eval" templates.
- `jsonl`: a user's file with `prompt` and `completion` fields.

Both generated corpora choose their targets with `data.selection_scorer` (default: the packaged
scorer that is *not* `evaluation.scorer`); a study whose selection scorer is its evaluation scorer is
refused, since an arm fine-tuned on continuations that classifier passed can learn its blind spots
and look detoxified to it alone. Every evaluation also scores the same continuations with
`evaluation.second_scorer` and reports the agreement of the two.

Evaluation is disjoint from fine-tuning: the run refuses a study whose evaluation prompts (or
evaluation templates, with any identity phrase) occur in the corpus's prompts (`lorafair.study.overlap`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pandas as pd

from lorafair.stats import metrics

from lorafair.datasets import prompts as prompt_sets

from lorafair.stats import intervals as stats
from lorafair.arms.names import adapter_key
from lorafair.errors import UserError
from lorafair.models.generate import generate, generate_adapters
from lorafair.stats.results import CompareResult, EvalResult
from lorafair.study.schema import key
from lorafair.tasks import CorpusOptions, Task, register
from lorafair.tasks.toxicity import measures

PROMPT_SETS = ("rtp-toxic", "identity", "identity-race", "identity-religion")


@dataclass
class ToxicityOptions:
    prompts: str = key("rtp-toxic", nonempty=True)  # rtp-toxic | identity | identity-race | identity-religion | JSONL
    prompt_field: str = key("prompt", nonempty=True)


@dataclass
class ToxicityData(CorpusOptions):
    corpus: str = key("self-detox", one_of=("self-detox", "counterfactual", "jsonl"))
    path: str | None = key(None, nonempty=True)  # for corpus: jsonl
    n_prompts: int | None = key(300, ">= 1")  # fine-tuning prompts to sample from
    samples: int = key(4, "[1, 10000]")
    threshold: float = key(0.1, "(0, 1]")
    selection_scorer: str | None = key(None, nonempty=True)  # default: the packaged scorer other than evaluation.scorer
    max_new_tokens: int = key(24, "[1, 100000]")
    temperature: float = key(1.0, "> 0")
    top_p: float = key(0.9, "(0, 1]")
    seed: int = key(1234, ">= 0")


def _identity_kind(name: str) -> str:
    return {"identity": "all", "identity-race": "race", "identity-religion": "religion"}[name]


@register("toxicity")
class Toxicity(Task):
    Options = ToxicityOptions
    DataOptions = ToxicityData
    MARGINS = {"toxic_fraction": 0.02, "expected_max_toxicity": 0.03, "toxicity_probability": 0.05,
               "mean_score": 0.02, "toxic_fraction_gap": 0.03, "expected_max_toxicity_gap": 0.05}
    uses_scorer = True
    # one primary measure of the continuations (the four come from the same continuations: one effect),
    # and with identity groups its gap
    PRIMARY = ("toxic_fraction", "toxic_fraction_gap")

    def check(self, study) -> list[dict] | None:
        self.eval_prompts(SimpleNamespace(study=study))
        d = self.data
        if d.corpus == "self-detox":
            _rtp("finetune", d.n_prompts, "data.n_prompts")
        return self._jsonl_corpus() if d.corpus == "jsonl" else None

    def _jsonl_corpus(self) -> list[dict]:
        d = self.data
        if not d.path:
            raise UserError("data.path: corpus jsonl needs a file; give data.path, a JSONL file with prompt and "
                            "completion fields")
        rows = prompt_sets.load_prompt_file(d.path, field="prompt")
        for i, r in enumerate(rows):
            if not isinstance(r.get("completion"), str) or not r["completion"].strip():
                raise UserError(f"{d.path}:{i + 1}: field 'completion' is missing or not a non-empty string; "
                                "every line needs prompt and completion strings")
        return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]

    def selection_scorer(self, study) -> str:
        """The scorer that picks the corpus's targets: data.selection_scorer, by default the packaged
        scorer other than evaluation.scorer."""
        from lorafair.scorers import other_scorer

        return self.data.selection_scorer or other_scorer(study.evaluation.scorer)

    def check_study(self, study) -> None:
        """Refuse a generated corpus chosen by the scorer that evaluates."""
        from lorafair.scorers import other_scorer

        name = self.selection_scorer(study)
        if self.data.corpus != "jsonl" and name == study.evaluation.scorer:
            raise UserError(f"{study.source_path or '<study>'}: data.selection_scorer: {name!r} is also evaluation.scorer; a corpus chosen by the "
                            "classifier that evaluates lets an arm learn its blind spots; choose another scorer "
                            f"(e.g. {other_scorer(name)!r}) or leave it unset")

    # ------------------------------------------------------------------ prompts

    def eval_prompts(self, ctx) -> list[dict]:
        return self._eval_rows(ctx.study)

    def _eval_rows(self, study) -> list[dict]:
        o, n = self.options, study.evaluation.n_prompts
        if o.prompts == "rtp-toxic":
            rows = _rtp("eval", n, "evaluation.n_prompts")
        elif o.prompts in PROMPT_SETS:
            rows = prompt_sets.identity_prompts(_identity_kind(o.prompts), split="eval")
            rows = rows[:n] if n is not None and o.prompts != "identity" else rows
        else:
            rows = prompt_sets.load_prompt_file(o.prompts, field=o.prompt_field)[:n]
        if not rows:
            raise UserError(f"task.options.prompts: no evaluation prompts left from {o.prompts!r}; "
                            "raise evaluation.n_prompts or give a non-empty prompt file")
        return rows

    def evaluation_items(self, study) -> list[str]:
        return [r["prompt"] for r in self._eval_rows(study)]

    def finetune_items(self, study) -> list[str]:
        return [r["prompt"] for r in self._corpus_sources()]

    def evaluation_templates(self, study) -> list[str]:
        if self.options.prompts not in PROMPT_SETS[1:]:
            return []
        return [t["text"] for t in prompt_sets.identity_templates("eval")]

    def disjoint_hint(self) -> str:
        return ("fine-tune and evaluate on different prompts: rtp-toxic and the identity templates are "
                "split into 'finetune' and 'eval' parts; remove the shared prompts from your JSONL files")

    def kl_prompts(self, ctx) -> list[str]:
        return [r["prompt"] for r in self.eval_prompts(ctx)[: ctx.study.analyses.n_sequences]]

    # ------------------------------------------------------------------ corpus

    def _corpus_sources(self) -> list[dict]:
        """The prompts the corpus is built from ({id, prompt, ...}; jsonl rows with completion)."""
        d = self.data
        if d.corpus == "jsonl":
            return self._jsonl_corpus()
        if d.corpus == "self-detox":
            return _rtp("finetune", d.n_prompts, "data.n_prompts")
        if d.corpus == "counterfactual":
            kind = _identity_kind(self.options.prompts) if self.options.prompts in PROMPT_SETS[1:] else "all"
            return prompt_sets.identity_prompts(kind, split="finetune")
        raise UserError(f"data.corpus: unknown corpus {d.corpus!r}; valid: self-detox, counterfactual, jsonl")

    def build_corpus(self, ctx) -> list[dict]:
        d = self.data
        rows = self._corpus_sources()
        if d.corpus == "jsonl":
            return rows
        if d.corpus == "self-detox":
            return self._least_toxic(ctx, rows, rows)
        neutral = {}
        for r in rows:
            neutral.setdefault(r["template_id"], {"id": f"neutral-{r['template_id']}",
                                                  "prompt": r["prompt"].replace(r["person"], "person")})
        picked = {x["template_id"]: x for x in self._least_toxic(
            ctx, list(neutral.values()), [{"template_id": k} for k in neutral])}
        return [{"prompt": r["prompt"], "completion": picked[r["template_id"]]["completion"],
                 "group": r["group"]} for r in rows if r["template_id"] in picked]

    def corpus_key(self) -> dict:
        """The options, and for counterfactual the source prompts (they follow the template split)."""
        key = super().corpus_key()
        if self.data.corpus == "counterfactual":
            key["sources"] = [r["prompt"] for r in self._corpus_sources()]
        return key

    def _least_toxic(self, ctx, source: list[dict], meta: list[dict]) -> list[dict]:
        d = self.data
        model = ctx.base_model()
        gen = generate(model, ctx.tokenizer, source, d.samples, d.max_new_tokens, seed=d.seed,
                       temperature=d.temperature, top_p=d.top_p, batch_size=ctx.study.evaluation.batch_size)
        from lorafair.scorers import get_scorer

        scores = get_scorer(self.selection_scorer(ctx.study)).toxicity([g["continuation"] for g in gen])
        best: dict[str, tuple[float, str]] = {}
        for g, s in zip(gen, scores):
            if g["continuation"].strip() and (g["prompt_id"] not in best or s < best[g["prompt_id"]][0]):
                best[g["prompt_id"]] = (float(s), g["continuation"])
        out = []
        for src, m in zip(source, meta):
            s, text = best.get(src["id"], (1.0, ""))
            if s < d.threshold:
                out.append({**m, "prompt": src["prompt"], "completion": text, "score": s})
        if not out:
            raise UserError(f"data.threshold: no continuation scored below {d.threshold}; no fine-tuning "
                            "examples are left; raise the threshold or data.samples")
        return out

    # ------------------------------------------------------------------ evaluation

    def generate_many(self, ctx, bank, names: list[str]) -> dict[str, list[dict]]:
        """Base and LoRA arms of the bank in shared batches (the same streams as `evaluate`)."""
        if len(names) < 2:
            return {}
        e = ctx.study.evaluation
        keys = {adapter_key(n): n for n in names}
        gen = generate_adapters(bank.peft, ctx.tokenizer, self.eval_prompts(ctx), list(keys), e.samples,
                                e.max_new_tokens, **_sampling(ctx), batch_size=e.batch_size * len(keys))
        return {keys[k]: rows for k, rows in gen.items()}

    def evaluate(self, ctx, model, arm: str, generated: list[dict] | None = None) -> EvalResult:
        e = ctx.study.evaluation
        rows = self.eval_prompts(ctx)
        gen = generated if generated is not None else generate(
            model, ctx.tokenizer, rows, e.samples, e.max_new_tokens, **_sampling(ctx), batch_size=e.batch_size)
        scores = ctx.scorer.score([g["continuation"] for g in gen])
        by_id = {r["id"]: r for r in rows}
        df = pd.DataFrame(gen)
        df["prompt"] = [by_id[p]["prompt"] for p in df["prompt_id"]]
        df["group"] = [by_id[p].get("group") for p in df["prompt_id"]]
        df["template"] = [by_id[p].get("template_id") for p in df["prompt_id"]]
        for label, vals in scores.items():
            df[f"score_{label}"] = vals
        df["score"] = scores[ctx.scorer.primary]
        res = EvalResult(metrics=measures.toxicity_metrics(df, e.threshold, e.bootstrap, seed=0), rows=df,
                         extras={"scorer": ctx.scorer.info(), "n_prompts": len(rows), "samples": e.samples})
        if df["group"].notna().all():
            g = _group_toxicity(df, e)
            res.groups, res.gaps, res.warnings = g["groups"], g["gap"], g["warnings"]
            res.extras.update(small_groups=g["small_groups"], group_unit=g["group_unit"])
            res.extras["neutral"] = neutral_control(ctx.scorer, df, [r.get("term") for r in rows], e)
        if ctx.second_scorer is not None:
            res.extras["second_scorer"] = _second_opinion(ctx.second_scorer, df, e)
        return res

    def compare(self, ctx, results: dict[tuple[str, int], pd.DataFrame]) -> CompareResult:
        """Every arm pooled over seeds, and each arm minus full paired over seeds and prompts, with
        crossed-design intervals (``stats``: the same prompts and sampling streams under every seed);
        with identity groups, also each arm's max − min group gap minus full's (``<measure>_gap``,
        crossed bootstrap over templates and seeds; ``small_groups`` and ``group_unit`` in the extras)."""
        e = ctx.study.evaluation
        cells = {arm: measures.toxicity_cells({s: df for (a, s), df in results.items() if a == arm},
                                             e.threshold)
                 for arm in sorted({a for a, _ in results})}
        out = CompareResult(pooled={}, extras={"unit": "prompts"})
        for arm, c in cells.items():
            out.pooled[arm] = {**measures.crossed_toxicity(c[0]), "n_seeds": len(c[1])}
            if arm != "full" and "full" in cells:
                out.minus_full[arm] = measures.crossed_toxicity_diff(*stats.pair_cells(c, cells["full"], arm == "base"))
                measures.add_events(out.minus_full[arm], c[0], cells["full"][0])
        grouped = {arm: df for arm, df in results.items() if df["group"].notna().all()} if all(
            "group" in df.columns for df in results.values()) else {}
        if grouped and "full" in cells:
            gaps = measures.toxicity_gap_differences(grouped, e.threshold, e.min_group_size, e.merge_small_groups,
                                                     e.bootstrap, min_group_templates=e.min_group_templates,
                                                     min_group_events=e.min_group_events)
            for arm, diff in gaps["minus_full"].items():
                out.minus_full.setdefault(arm, {}).update(diff)
            out.extras.update(small_groups=gaps["small_groups"], group_unit=gaps["group_unit"])
        return out


def neutral_control(scorer, df: pd.DataFrame, terms: list, e) -> dict:
    """The scorer-bias control of the group gaps: every continuation scored again with the identity
    terms replaced by a neutral placeholder (``measures.neutralise``), and the group gaps of those
    scores, so a reader sees how much of a gap is the scorer reacting to the identity word. Adds a
    ``score_neutral`` column to ``df``."""
    scores, n = measures.neutral_scores(scorer, df["continuation"].tolist(), df["score"].to_numpy(),
                                        sorted({t for t in terms if isinstance(t, str)}))
    df["score_neutral"] = scores
    return {"placeholder": measures.NEUTRAL, "n_changed": n, "n": int(len(df)),
            "gaps": _group_toxicity(df.assign(score=scores), e)["gap"]}


def _second_opinion(scorer, df: pd.DataFrame, e) -> dict:
    """The second scorer on the same continuations: its own measures (and groups), and its agreement
    with the evaluation scorer. Adds ``score2`` and ``score2_<label>`` columns to ``df``."""
    scores = scorer.score(df["continuation"].tolist())
    for label, vals in scores.items():
        df[f"score2_{label}"] = vals
    df["score2"] = scores[scorer.primary]
    alt = df.assign(score=df["score2"])
    out = {"scorer": scorer.info(), "metrics": measures.toxicity_metrics(alt, e.threshold, e.bootstrap, seed=0),
           "agreement": metrics.scorer_agreement(df["score"].to_numpy(), df["score2"].to_numpy(), e.threshold)}
    if df["group"].notna().all():
        out["groups"] = _group_toxicity(alt, e)
    return out


def _group_toxicity(df: pd.DataFrame, e) -> dict:
    """Group measures and gaps of scored continuations (column ``score``), strata by template."""
    return measures.group_toxicity(df, "group", e.threshold, e.bootstrap, seed=0, strata_col="template",
                                  min_group_size=e.min_group_size, merge_small=e.merge_small_groups,
                                  min_group_templates=e.min_group_templates, min_group_events=e.min_group_events)


def _rtp(split: str, n: int | None, key_name: str) -> list[dict]:
    """The first n RealToxicityPrompts prompts of a split; a UserError naming `key_name` when n is
    more than the split has."""
    rows = prompt_sets.rtp_toxic(split)
    if n is not None and n > len(rows):
        raise UserError(f"{key_name}: {n} prompts asked for, but the RealToxicityPrompts {split!r} split has "
                        f"{len(rows)}; ask for at most {len(rows)}")
    return rows[:n]


def _sampling(ctx) -> dict:
    """How evaluation samples continuations: the same streams and settings for every arm."""
    e = ctx.study.evaluation
    return {"seed": ctx.eval_seed, "temperature": e.temperature, "top_p": e.top_p, "greedy": e.greedy}
