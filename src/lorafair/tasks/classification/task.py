"""Fair decisions: fine-tune on tabular profiles written as text (Adult, COMPAS, German credit) with
the true label as a one-word answer, then measure how each arm decides for every protected group.

Decision rule: the arm answers with whichever of the two answer words (default " Yes" / " No") has
the higher log-probability after the prompt; p(positive) is the positive word's probability
renormalised over the two words, p = sigmoid(lp_pos - lp_neg). A tie counts as the negative answer.

Measures (per protected attribute, intervals resample test rows): accuracy, balanced accuracy,
per-group accuracy / selection rate / TPR / FPR, accuracy disparity, demographic-parity difference,
equalized-odds difference (``measures.decision_metrics``), and the counterfactual flip rate: the share
of decisions that change when only the protected attribute is swapped in the profile
(``datasets.tabular.counterfactual``), with the mean |Δp|.

Splits: the fine-tuning corpus is the data set's train slice (``n_train`` rows), which the runner
divides by hash into train / validation / held out. Decisions are scored on the test slice
(``n_test``); the validation slice (``n_val``) is never trained on or scored, and supplies the
prompts of the token-posterior KL. No profile text occurs in two slices (``tabular.load_tabular``),
and the run checks that no test profile is in the fine-tuning corpus (``lorafair.study.overlap``).
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import pandas as pd
import torch

from lorafair.models import lm

from lorafair.stats import metrics

from lorafair.stats import intervals as stats
from lorafair.datasets import tabular
from lorafair.errors import UserError
from lorafair.stats.results import CompareResult, EvalResult
from lorafair.study.schema import key
from lorafair.tasks import CorpusOptions, Task, register
from lorafair.tasks.classification import measures
from lorafair.tasks.classification.measures import selection_events


@dataclass
class ClassificationOptions:
    dataset: str = key("adult", one_of=tabular.NAMES)
    protected: list[str] | None = None  # default: every protected attribute of the data set
    answers: list[str] | None = None  # [positive, negative]; default [" Yes", " No"]


@dataclass
class ClassificationData(CorpusOptions):
    # Slice sizes of the data set's fixed pools; None takes the data set's default sizes (400, 100, 300).
    n_train: int | None = key(None, ">= 1")
    n_val: int | None = key(None, ">= 1")
    n_test: int | None = key(None, ">= 1")
    seed: int = key(0, ">= 0")  # fixes which rows fall in which pool
    val_fraction: float = key(0.15, "[0, 1)")
    heldout_fraction: float = key(0.1, "[0, 1)")


@register("classification")
class Classification(Task):
    Options = ClassificationOptions
    DataOptions = ClassificationData
    PRIMARY = ("balanced_accuracy", "equalized_odds_difference")  # the decision, and its fairness
    MARGINS = {"accuracy": 0.02, "balanced_accuracy": 0.02, "answer_mass": 0.05,
               "accuracy_disparity": 0.03, "demographic_parity_difference": 0.03,
               "equalized_odds_difference": 0.05, "flip_rate": 0.02, "mean_abs_delta_p": 0.02}

    def __init__(self, options: ClassificationOptions, data: ClassificationData):
        super().__init__(options, data)
        if options.dataset not in tabular.NAMES:
            raise UserError(f"task.options.dataset: unknown data set {options.dataset!r}; "
                            f"valid: {', '.join(tabular.NAMES)}")
        valid = tabular.DATASETS[options.dataset].protected
        self.protected = tuple(valid if options.protected is None else options.protected)
        bad = [a for a in self.protected if a not in valid]
        if bad or not self.protected:
            what = f"{bad} not available for {options.dataset}" if bad else "the list is empty"
            raise UserError(f"task.options.protected: {what}; choose from {', '.join(valid)}")
        answers = tabular.DATASETS[options.dataset].answers if options.answers is None else tuple(options.answers)
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

    def evaluation_items(self, study) -> list[str]:
        return [ex["prompt"] for ex in self.splits()["test"]]

    def finetune_items(self, study) -> list[str]:
        return [ex["prompt"] for ex in self.splits()["train"]]

    def disjoint_hint(self) -> str:
        return "the tabular splits must not share a profile (see datasets.tabular.load_tabular)"

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

    def evaluate(self, ctx, model, arm: str) -> EvalResult:
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
        res = EvalResult(metrics=headline, rows=rows, extras={"small_groups": {}})
        for a in self.protected:
            rows[a] = [ex[a] for ex in test]
            dm = measures.decision_metrics(labels, pred, rows[a].to_numpy(), n_boot=e.bootstrap, seed=0,
                                          min_group_size=e.min_group_size,
                                          merge_small=e.merge_small_groups, min_group_events=e.min_group_events)
            headline.setdefault("accuracy", dm["metrics"]["accuracy"])  # the same for every attribute
            headline.setdefault("balanced_accuracy", dm["metrics"]["balanced_accuracy"])
            for key in ("accuracy_disparity", "demographic_parity_difference", "equalized_odds_difference"):
                headline[f"{key}_{a}"] = dm["metrics"][key]
            res.groups.update({f"{a}: {g}": ms for g, ms in dm["by_group"].items()})
            res.gaps.update({f"{k}_{a}": r for k, r in dm["gaps"].items()})
            res.extras["small_groups"][a] = dm["small_groups"]
            res.warnings += [f"{a}: {w}" for w in dm["warnings"]]
            twins = [tabular.counterfactual(ex, a) for ex in test]
            cf_pred, cf_p, _ = self.decide(ctx, model, [t["prompt"] for t in twins])
            rows[f"cf_{a}"] = [t[a] for t in twins]
            rows[f"cf_pred_{a}"] = cf_pred
            rows[f"cf_p_pos_{a}"] = cf_p
            flips = measures.flip_rate(pred, cf_pred, p_pos, cf_p, n_boot=e.bootstrap, seed=0)
            headline[f"flip_rate_{a}"] = flips["flip_rate"]
            headline[f"mean_abs_delta_p_{a}"] = flips["mean_abs_delta_p"]
        res.extras.update(dataset=self.options.dataset, answers=list(self.answers), n_test=len(test))
        return res

    # ------------------------------------------------------------------ arms against each other

    def competence(self, results: dict[tuple[str, int], pd.DataFrame], pooled: dict[str, dict]
                   ) -> dict[str, str]:
        """A classifier whose pooled balanced accuracy does not beat the majority class's 0.5 (its
        95% interval reaches 0.5) has not learnt the decision."""
        out = {}
        for arm, recs in pooled.items():
            r = (recs or {}).get("balanced_accuracy")
            if arm != "base" and isinstance(r, dict) and isinstance(r.get("lo"), (int, float)) and r["lo"] <= 0.5:
                out[arm] = (f"balanced accuracy {r['value']:.3f} (95% CI from {r['lo']:.3f}) does not beat "
                            "the majority class (0.5)")
        return out

    def seed_competence(self, results: dict[tuple[str, int], pd.DataFrame]) -> dict[tuple[str, int], str]:
        """A seed whose classifier gives one answer to every test row has learnt a constant rule."""
        return {key: "a constant classifier" for key, df in results.items()
                if key[0] != "base" and "pred" in df and len(df) and df["pred"].nunique() == 1}

    def compare(self, ctx, results: dict[tuple[str, int], pd.DataFrame]) -> CompareResult:
        """Every headline metric pooled over seeds and each arm minus full, paired over seeds and test
        rows (crossed design): smooth measures with ``stats.crossed_interval`` /
        ``crossed_difference``, the disparities (max − min over the groups large enough) with the
        crossed bootstrap."""
        e = ctx.study.evaluation
        frames = {arm: [] for arm, _ in results}
        for (arm, seed), df in sorted(results.items()):
            frames[arm].append(_cells_frame(df, self.protected).assign(seed=seed))
        tables = {arm: pd.concat(f, ignore_index=True) for arm, f in frames.items()}
        smooth = {arm: stats.cell_table(t, SMOOTH_COLS + _attr_cols(self.protected), "id")
                  for arm, t in tables.items()}
        conf = {arm: stats.cell_table(t, CONFUSION, "id") for arm, t in tables.items()}
        groups = _unit_groups(next(iter(tables.values())), self.protected, e)
        out = CompareResult(pooled={}, extras={"unit": "test rows", "small_groups": groups["left_out"]})
        measures = _measures(self.protected)
        for arm in tables:
            out.pooled[arm] = {name: {**stats.crossed_interval(smooth[arm][0], f), "higher_is_better": hib,
                                         "unit": unit} for name, (f, hib, unit) in measures.items()}
            for attr in self.protected:
                x = _by_group(conf[arm], groups[attr])
                for key, (hib, unit) in DISPARITIES.items():
                    gap = _disparity_fn(key)
                    boots = stats.crossed_bootstrap([x], lambda s, g=gap: g(s[0]), e.bootstrap)
                    out.pooled[arm][f"{key}_{attr}"] = {
                        **stats.bootstrap_record(float(gap(x.sum(axis=(0, 1)))), boots),
                        "higher_is_better": hib, "unit": unit}
            out.pooled[arm]["n_seeds"] = len(smooth[arm][1])
        if "full" not in tables:
            return out
        for arm in tables:
            if arm == "full":
                continue
            xa, xb = stats.pair_cells(smooth[arm], smooth["full"], arm == "base")
            entry = {name: {**stats.crossed_difference(xa, xb, f), "higher_is_better": hib,
                            "unit": f"difference in {unit} (arm − full)"}
                     for name, (f, hib, unit) in measures.items()}
            ca, cb = stats.pair_cells(conf[arm], conf["full"], arm == "base")
            units = [u for u in conf[arm][2] if u in set(conf["full"][2])]
            for attr in self.protected:
                for key, (hib, unit) in DISPARITIES.items():
                    d = stats.gap_difference(_by_group((ca, None, units), groups[attr]),
                                             _by_group((cb, None, units), groups[attr]),
                                             _disparity_fn(key), e.bootstrap)
                    entry[f"{key}_{attr}"] = {**d, "higher_is_better": hib,
                                              "unit": f"difference in {unit} (arm − full)"}
                own = [selection_events(_by_group(conf[a], groups[attr]).sum(axis=(0, 1)), groups["names"][attr])
                       for a in (arm, "full")]
                entry[f"demographic_parity_difference_{attr}"].update(metrics.gap_floor(*own, e.min_group_events))
            out.minus_full[arm] = entry
        return out


SMOOTH_COLS = ["mass", "ok", "tp", "pos", "tn", "neg"]
CONFUSION = ["c_tn", "c_fp", "c_fn", "c_tp"]
DISPARITIES = {  # decision_stats_from_counts key: (higher_is_better, unit)
    "accuracy_disparity": (False, "accuracy, max − min over groups"),
    "demographic_parity_difference": (False, "selection rate, max − min over groups"),
    "equalized_odds_difference": (False, "larger of TPR and FPR max − min over groups"),
}


def _attr_cols(protected: tuple[str, ...]) -> list[str]:
    return [c for a in protected for c in (f"flip_{a}", f"adp_{a}")]


def _cells_frame(df: pd.DataFrame, protected: tuple[str, ...]) -> pd.DataFrame:
    """Per test row: the sums the pooled measures are made of (one evaluation's rows)."""
    y, p = df["label"].to_numpy(np.int64), df["pred"].to_numpy(np.int64)
    out = pd.DataFrame({"id": df["id"].to_numpy(),
                        "mass": np.exp(df["lp_pos"].to_numpy(np.float64)) + np.exp(df["lp_neg"].to_numpy(np.float64)),
                        "ok": (y == p).astype(float), "tp": (y & p).astype(float), "pos": y.astype(float),
                        "tn": ((1 - y) & (1 - p)).astype(float), "neg": (1 - y).astype(float)})
    for i, c in enumerate(CONFUSION):
        out[c] = (2 * y + p == i).astype(float)
    for a in protected:
        out[a] = df[a].to_numpy() if a in df.columns else None
        if f"cf_pred_{a}" in df.columns:
            out[f"flip_{a}"] = (df["pred"] != df[f"cf_pred_{a}"]).to_numpy(float)
            out[f"adp_{a}"] = np.abs(df["p_pos"] - df[f"cf_p_pos_{a}"]).to_numpy(float)
    return out


def _measures(protected: tuple[str, ...]) -> dict:
    """Smooth headline measures: name -> (function of the mean cell, higher_is_better, unit)."""
    col = {c: i for i, c in enumerate(SMOOTH_COLS + _attr_cols(protected))}
    out = {"answer_mass": (lambda m: m[..., col["mass"]], None, "probability of either answer word"),
           "accuracy": (lambda m: m[..., col["ok"]], True, "share of examples"),
           "balanced_accuracy": (lambda m: (m[..., col["tp"]] / m[..., col["pos"]]
                                            + m[..., col["tn"]] / m[..., col["neg"]]) / 2, True,
                                 "mean recall of the two classes")}
    for a in protected:
        out[f"flip_rate_{a}"] = (lambda m, j=col[f"flip_{a}"]: m[..., j], False, "share of decisions")
        out[f"mean_abs_delta_p_{a}"] = (lambda m, j=col[f"adp_{a}"]: m[..., j], False, "probability")
    return out


def _unit_groups(table: pd.DataFrame, protected: tuple[str, ...], e) -> dict:
    """Per attribute: id -> group code (−1: a group below evaluation.min_group_size, left out);
    ``left_out``: attribute -> {group: size}; ``names``: attribute -> the kept groups, in code order."""
    rows = table.drop_duplicates("id").set_index("id")
    out: dict = {"left_out": {}, "names": {}}
    for a in protected:
        labels, left = metrics.small_groups(rows[a].astype(str), e.min_group_size, e.merge_small_groups)
        codes, names = pd.factorize(labels.where(~labels.isin(list(left))), sort=True)
        out[a] = dict(zip(rows.index, codes))
        out["left_out"][a] = left
        out["names"][a] = [str(g) for g in names]
    return out


def _by_group(cells: tuple, group_of: dict) -> np.ndarray:
    """Confusion cells [S, U, 4] spread over groups → [S, U, G, 4] (left-out groups dropped)."""
    x, _, units = cells
    codes = np.array([group_of.get(u, -1) for u in units])
    G = max(int(codes.max()) + 1, 0)
    out = np.zeros(x.shape[:2] + (G, x.shape[-1]))
    keep = codes >= 0
    out[:, np.flatnonzero(keep), codes[keep]] = x[:, keep]
    return out


def _disparity_fn(key: str):
    """Group confusion sums [..., G, 4] → the disparity ``key`` [...] (NaN with fewer than 2 groups)."""
    def fn(sums: np.ndarray) -> np.ndarray:
        if sums.shape[-2] < 2:
            return np.full(sums.shape[:-2], np.nan)
        return measures.decision_stats_from_counts(sums)[key]

    return fn
