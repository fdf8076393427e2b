"""Fair decisions: fine-tune on tabular profiles written as text (Adult, COMPAS, German credit) with
the true label as a one-word answer, then measure how each arm decides for every protected group.

Decision rule: the arm answers with whichever of the two answer words (default " Yes" / " No") has
the higher log-probability after the prompt; p(positive) is the positive word's probability
renormalised over the two words, p = sigmoid(lp_pos - lp_neg). A tie counts as the negative answer.

Measures (per protected attribute, intervals resample test rows): accuracy, balanced accuracy,
per-group accuracy / selection rate / TPR / FPR, accuracy disparity, demographic-parity difference,
equalized-odds difference (``metrics.decision_metrics``), and the counterfactual flip rate: the share
of decisions that change when only the protected attribute is swapped in the profile
(``datasets.tabular.counterfactual``), with the mean |Δp|.

Splits: the fine-tuning corpus is the data set's train slice (``n_train`` rows), which the runner
divides by hash into train / validation / held out. Decisions are scored on the test slice
(``n_test``); the validation slice (``n_val``) is never trained on or scored, and supplies the
prompts of the token-posterior KL.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch

from lorafair import lm, metrics
from lorafair.datasets import tabular
from lorafair.errors import UserError
from lorafair.tasks import CorpusOptions, Task, register


@dataclass
class ClassificationOptions:
    dataset: str = "adult"  # adult | compas | german
    protected: list[str] | None = None  # default: every protected attribute of the data set
    answers: list[str] | None = None  # [positive, negative]; default [" Yes", " No"]


@dataclass
class ClassificationData(CorpusOptions):
    # Slice sizes of the data set's fixed pools; None takes tabular.DEFAULT_SIZES (400, 100, 300).
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    seed: int = 0  # fixes which rows fall in which pool
    val_fraction: float = 0.15
    heldout_fraction: float = 0.1


@register("classification")
class Classification(Task):
    Options = ClassificationOptions
    DataOptions = ClassificationData

    def __init__(self, options: ClassificationOptions, data: ClassificationData):
        super().__init__(options, data)
        if options.dataset not in tabular.NAMES:
            raise UserError(f"task.options.dataset: unknown data set {options.dataset!r}; "
                            f"valid: {', '.join(tabular.NAMES)}")
        valid = tabular.PROTECTED[options.dataset]
        self.protected = tuple(valid if options.protected is None else options.protected)
        bad = [a for a in self.protected if a not in valid]
        if bad or not self.protected:
            what = f"{bad} not available for {options.dataset}" if bad else "the list is empty"
            raise UserError(f"task.options.protected: {what}; choose from {', '.join(valid)}")
        answers = tabular.ANSWERS[options.dataset] if options.answers is None else tuple(options.answers)
        if len(answers) != 2 or answers[0] == answers[1]:
            raise UserError(f"task.options.answers: need two different words [positive, negative], "
                            f"got {list(answers)}")
        self.answers: tuple[str, str] = (answers[0], answers[1])
        self._splits: dict[str, list[dict]] | None = None

    # ------------------------------------------------------------------ data

    def splits(self) -> dict[str, list[dict]]:
        """The data set's train / val / test examples (loaded once per task object)."""
        if self._splits is None:
            d = self.data
            self._splits = tabular.load_tabular(self.options.dataset, d.n_train, d.n_val, d.n_test,
                                                seed=d.seed, protected=self.protected)
        return self._splits

    def answer_ids(self, tokenizer) -> list[int]:
        """Token ids of [positive, negative]; UserError (with a suggestion) unless each is one token."""
        try:
            tabular.check_answer_words(tokenizer, self.answers)
        except UserError as e:
            raise UserError(f"task.options.answers: {e}") from None
        return [tokenizer.encode(w, add_special_tokens=False)[0] for w in self.answers]

    def build_corpus(self, ctx) -> list[dict]:
        self.answer_ids(ctx.tokenizer)
        pos, neg = self.answers
        return [{"id": ex["id"], "prompt": ex["prompt"], "completion": pos if ex["label"] else neg,
                 "label": ex["label"], **{a: ex[a] for a in self.protected}}
                for ex in self.splits()["train"]]

    def kl_prompts(self, ctx) -> list[str]:
        s = self.splits()
        rows = s["val"] or s["test"]
        return [r["prompt"] for r in rows[: ctx.study.analyses.n_sequences]]

    # ------------------------------------------------------------------ evaluation

    def decide(self, ctx, model, prompts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decisions for prompts: (pred [n] int 0/1, p_pos [n], answer log-probs [n, 2])."""
        lp = lm.choice_logprobs(model, ctx.tokenizer, prompts, self.answer_ids(ctx.tokenizer),
                                batch_size=ctx.study.evaluation.batch_size).to(torch.float32)
        p_pos = torch.sigmoid(lp[:, 0] - lp[:, 1])
        pred = (lp[:, 0] > lp[:, 1]).to(torch.int64)
        return pred.numpy(), p_pos.numpy(), lp.numpy()

    def evaluate(self, ctx, model, arm: str) -> tuple[dict, pd.DataFrame]:
        e = ctx.study.evaluation
        test = self.splits()["test"]
        if not test:
            raise UserError("data.n_test: the test slice is empty; ask for at least one test row")
        pred, p_pos, lp = self.decide(ctx, model, [ex["prompt"] for ex in test])
        labels = np.array([ex["label"] for ex in test], dtype=np.int64)
        rows = pd.DataFrame({"id": [ex["id"] for ex in test], "label": labels, "pred": pred,
                             "p_pos": p_pos, "lp_pos": lp[:, 0], "lp_neg": lp[:, 1]})
        mass = np.exp(lp).sum(axis=1)
        ci = metrics.bootstrap_ci(mass, n_boot=e.bootstrap, seed=0)
        headline = {"answer_mass": metrics.record(
            ci["value"], ci["lo"], ci["hi"], higher_is_better=None, n=ci["n"], n_boot=ci["n_boot"],
            unit="probability of either answer word (how much the model answers at all)")}
        by_group, warnings = {}, []
        for a in self.protected:
            rows[a] = [ex[a] for ex in test]
            dm = metrics.decision_metrics(labels, pred, rows[a].to_numpy(), n_boot=e.bootstrap, seed=0)
            headline.setdefault("accuracy", dm["metrics"]["accuracy"])  # the same for every attribute
            headline.setdefault("balanced_accuracy", dm["metrics"]["balanced_accuracy"])
            for key in ("accuracy_disparity", "demographic_parity_difference", "equalized_odds_difference"):
                headline[f"{key}_{a}"] = dm["metrics"][key]
            by_group[a] = dm["by_group"]
            warnings += [f"{a}: {w}" for w in dm["warnings"]]
            twins = [tabular.counterfactual(ex, a) for ex in test]
            cf_pred, cf_p, _ = self.decide(ctx, model, [t["prompt"] for t in twins])
            rows[f"cf_{a}"] = [t[a] for t in twins]
            rows[f"cf_pred_{a}"] = cf_pred
            rows[f"cf_p_pos_{a}"] = cf_p
            flips = metrics.flip_rate(pred, cf_pred, p_pos, cf_p, n_boot=e.bootstrap, seed=0)
            headline[f"flip_rate_{a}"] = flips["flip_rate"]
            headline[f"mean_abs_delta_p_{a}"] = flips["mean_abs_delta_p"]
        summary = {"metrics": headline, "by_group": by_group, "warnings": warnings,
                   "dataset": self.options.dataset, "answers": list(self.answers), "n_test": len(test)}
        return summary, rows

    # ------------------------------------------------------------------ arms against each other

    def compare(self, ctx, results: dict[tuple[str, int], pd.DataFrame]) -> dict:
        """Each arm minus full of the same seed, resampling the same test rows for both:
        accuracy, and per protected attribute the accuracy disparity and the flip rate."""
        n_boot = ctx.study.evaluation.bootstrap
        out: dict = {"vs_full": {}}
        for (arm, seed), df in sorted(results.items()):
            full = results.get(("full", seed))
            if arm == "full" or full is None:
                continue
            a, b = _align(df, full)
            ok_a = (a.pred == a.label).to_numpy(np.float64)
            ok_b = (b.pred == b.label).to_numpy(np.float64)
            entry = {"accuracy": _diff(ok_a, ok_b, np.mean, n_boot, "accuracy", True)}
            for attr in self.protected:
                if attr not in a.columns:
                    continue
                codes, names = pd.factorize(a[attr], sort=True)
                spread = partial(_disparity, n_groups=len(names))
                entry[f"accuracy_disparity_{attr}"] = _diff(
                    np.column_stack([ok_a, codes]), np.column_stack([ok_b, codes]), spread, n_boot,
                    "accuracy, max − min over groups", False)
                fa = (a.pred != a[f"cf_pred_{attr}"]).to_numpy(np.float64)
                fb = (b.pred != b[f"cf_pred_{attr}"]).to_numpy(np.float64)
                entry[f"flip_rate_{attr}"] = _diff(fa, fb, np.mean, n_boot, "share of decisions", False)
            out["vs_full"][f"{arm}@{seed}"] = entry
        return out


def _align(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames on their common test ids, in the same order."""
    common = a["id"][a["id"].isin(set(b["id"]))]
    if common.empty:
        raise UserError("compare: the two arms share no test example; evaluate them on the same data")
    return (a.set_index("id").loc[common].reset_index(), b.set_index("id").loc[common].reset_index())


def _disparity(x: np.ndarray, n_groups: int) -> float:
    """Max − min of group accuracy.  x: [n, 2] (correct 0/1, group code in 0..n_groups-1);
    NaN when a group is absent (a bootstrap replicate without it is skipped)."""
    codes = x[:, 1].astype(np.int64)
    counts = np.bincount(codes, minlength=n_groups)
    if (counts == 0).any():
        return float("nan")
    return float(np.ptp(np.bincount(codes, weights=x[:, 0], minlength=n_groups) / counts))


def _diff(xa: np.ndarray, xb: np.ndarray, stat, n_boot: int, unit: str, higher_is_better: bool) -> dict:
    d = metrics.paired_bootstrap_diff(xa, xb, stat, n_boot=n_boot, seed=0)
    return metrics.record(d["value"], d["lo"], d["hi"], higher_is_better=higher_is_better,
                          unit=f"difference in {unit} (arm − full)", n=d["n"], n_boot=d["n_boot"])
