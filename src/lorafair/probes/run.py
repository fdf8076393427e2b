"""Bias probes run on every arm alongside its task: CrowS-Pairs, StereoSet and BBQ.

The model scores each sentence by its total log-likelihood, every token of it after the model's start
token (``lm.sequence_loglik``, ``lm.start_ids``; the causal-LM adaptation in docs/measures.md);
``datasets.stereotype`` turns the scores into measures:

- ``crows_stereo_preference``: % of CrowS-Pairs items whose stereotypical sentence is the likelier
  (50 = no preference, the ideal; above 50 leans to the stereotype);
- ``stereoset_ss`` (stereotype score, ideal 50), ``stereoset_lms`` (language-model score: meaningful
  options preferred over the unrelated one, ideal 100) and ``stereoset_icat`` (ideal 100), with
  StereoSet's sentences compared by mean log-likelihood per token;
- ``bbq_accuracy_ambiguous`` / ``bbq_accuracy_disambiguated`` (ideal 1) and, for items that carry
  BBQ's polarity and target labels, ``bbq_bias_score_ambiguous`` / ``bbq_bias_score_disambiguated``
  (ideal 0), each option scored by its mean log-probability per token after the passage and question
  (``datasets.bbq``).

Items: the first ``evaluation.n_probe_items`` of each probe (None: all), the same for every arm.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from lorafair.models import lm

from lorafair.stats import metrics
from lorafair.datasets import bbq, stereotype
from lorafair.study.config import PROBES
from lorafair.errors import UserError

ITEMS = {"crows-pairs": stereotype.crows_pairs, "stereoset": stereotype.stereoset_intrasentence,
         "bbq": lambda n: bbq.bbq_items(n)[0]}
assert set(ITEMS) == set(PROBES)
BBQ_UNITS = {"accuracy_ambiguous": (True, "share of ambiguous items answered unknown (correct)"),
             "accuracy_disambiguated": (True, "share of disambiguated items answered correctly"),
             "bias_score_ambiguous": (None, "BBQ bias score, ambiguous contexts (0 = none, -100..100)"),
             "bias_score_disambiguated": (None, "BBQ bias score, disambiguated contexts (0 = none, -100..100)")}


def check_probes(names: list[str], n_items: int | None) -> None:
    """Load each probe's items (from its installed package) once, before any arm is trained."""
    for name in names:
        if not ITEMS[name](n_items):
            raise UserError(f"evaluation.probes: probe {name!r} has no items; check its installed data package")


def _scorers(model, tokenizer, batch_size: int) -> tuple[Callable, Callable]:
    """(loglik, n_tokens) over texts, sharing one forward pass per distinct text."""
    seen: dict[str, tuple[float, float]] = {}

    def fill(texts: list[str]) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in seen]
        if new:
            total, count = lm.sequence_loglik(model, tokenizer, new, batch_size=batch_size)
            seen.update(zip(new, zip(total.tolist(), count.tolist())))

    def loglik(texts: list[str]) -> np.ndarray:
        fill(texts)
        return np.array([seen[t][0] for t in texts], dtype=np.float64)

    def n_tokens(texts: list[str]) -> np.ndarray:
        fill(texts)
        return np.array([seen[t][1] for t in texts], dtype=np.float64)

    return loglik, n_tokens


def _record(r: dict, higher_is_better: bool | None, unit: str, n: int) -> dict:
    return metrics.record(r["value"], r["low"], r["high"], higher_is_better=higher_is_better, unit=unit, n=n)


def evaluate_probes(ctx, model, names: list[str]) -> tuple[dict, pd.DataFrame]:
    """Run the named probes on one arm's model.

    names: subset of :data:`PROBES`. Returns (summary, rows): summary = {"metrics": {name: record},
    "by_bias_type": {probe: {bias type: ...}}, "n_items": {probe: n}}; rows: one per item with a
    ``probe`` column and the item's scores.
    """
    bad = [n for n in names if n not in PROBES]
    if bad:
        raise UserError(f"evaluation.probes: unknown probe(s) {bad}; valid: {', '.join(PROBES)}")
    e = ctx.study.evaluation
    loglik, n_tokens = _scorers(model, ctx.tokenizer, e.batch_size)
    summary: dict = {"metrics": {}, "by_bias_type": {}, "n_items": {}}
    frames = []
    if "crows-pairs" in names:
        res = stereotype.crows_score(stereotype.crows_pairs(e.n_probe_items), loglik, n_boot=e.bootstrap)
        n = res["overall"]["n"]
        summary["metrics"]["crows_stereo_preference"] = _record(
            res["overall"], None, "% pairs preferring the stereotype (50 = none)", n)
        summary["by_bias_type"]["crows-pairs"] = res["by_bias_type"]
        summary["n_items"]["crows-pairs"] = n
        frames.append(res["items"].assign(probe="crows-pairs"))
    if "stereoset" in names:
        res = stereotype.stereoset_score(stereotype.stereoset_intrasentence(e.n_probe_items), loglik,
                                         n_tokens=n_tokens, n_boot=e.bootstrap)
        o, n = res["overall"], res["overall"]["n"]
        summary["metrics"]["stereoset_ss"] = _record(
            o["ss"], None, "% items preferring the stereotype over the anti-stereotype (50 = none)", n)
        summary["metrics"]["stereoset_lms"] = _record(
            o["lms"], True, "% comparisons preferring a meaningful option over the unrelated one", n)
        summary["metrics"]["stereoset_icat"] = _record(o["icat"], True, "ICAT score (100 = ideal)", n)
        summary["by_bias_type"]["stereoset"] = res["by_bias_type"]
        summary["n_items"]["stereoset"] = n
        frames.append(res["items"].assign(probe="stereoset"))
    if "bbq" in names:
        items, dropped = bbq.bbq_items(e.n_probe_items)
        res = bbq.bbq_score(items, bbq.choose(items, loglik, n_tokens), n_boot=e.bootstrap)
        o = res["overall"]
        for stat, (hib, unit) in BBQ_UNITS.items():
            if stat.startswith("accuracy") or o["n_labelled"] > 0:
                summary["metrics"][f"bbq_{stat}"] = _record(o[stat], hib, unit, o["n"])
        summary["by_bias_type"]["bbq"] = res["by_category"]
        summary["n_items"]["bbq"] = o["n"]
        summary["bbq"] = {"dropped": dropped, "n_ambiguous": o["n_ambiguous"], "n_labelled": o["n_labelled"]}
        frames.append(res["items"].assign(probe="bbq"))
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return summary, rows
