"""The verdict: a table and sentences generated from the decisions in compare.json, nothing else.

Rules:
- each arm is compared with full fine-tuning through the paired difference arm − full and its
  decision (``lorafair.stats.equivalence.decide``): *equivalent* within the metric's margin δ when the 90%
  interval lies inside ±δ; *better*/*worse* (*higher*/*lower* without a direction) when the 95%
  interval excludes zero, saying whether it also exceeds δ; otherwise *inconclusive*, with a rough
  count of the evaluation units or training seeds that would settle it;
- the rank recommendation is the smallest rank *equivalent* on every metric with a margin, or
  "none established"; it never rests on overlapping intervals;
- fit check: an arm whose best validation loss exceeds the best arm's by more than
  ``FIT_TOLERANCE`` (relative, 5%) did not fit the data as well, so its differences from other arms
  may reflect training rather than rank or method;
- a number without a finite interval is stated as such, never compared.
"""

from __future__ import annotations

import math
from typing import Any

from lorafair.arms.names import VARIANT_LABELS, arm_label, arm_rank
from lorafair.report.fmt import num, places, value_ci
from lorafair.report.load import finite, is_record
from lorafair.stats.equivalence import rank_recommendation

FIT_TOLERANCE = 0.05

def _cap(text: str) -> str:
    """Sentence start for an arm label; method names keep their own case (rsLoRA)."""
    return text[:1].upper() + text[1:] if text.startswith(("the ", "full ")) else text


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def metric_label(name: str) -> str:
    return name.replace("_", " ")


DECISION_LABELS = {"equivalent": "equivalent", "better": "better", "worse": "worse", "higher": "higher",
                   "lower": "lower", "inconclusive": "inconclusive", "undefined": "no interval",
                   "no margin": "no margin"}


def decision_label(d: dict) -> str:
    """``"worse >δ"`` / ``"equivalent"`` / ...: the decision, marked when it exceeds the margin."""
    word = DECISION_LABELS.get(d.get("decision"), str(d.get("decision")))
    return word + (" >δ" if d.get("beyond_margin") else "")


def decision_cell(d: dict) -> str:
    """One verdict-table cell: ``"equivalent: +0.003 (-0.010 to +0.016)"`` (95% interval)."""
    return f"{decision_label(d)}: {value_ci(d, signed=True, label='')}"


def _more_data_clause(d: dict, unit: str) -> str:
    need = d.get("more_data") or {}
    parts = []
    if need.get("units"):
        parts.append(f"about {need['units']} {unit} (now {need['n_units']})")
    if need.get("seeds"):
        parts.append(f"about {need['seeds']} training seeds (now {need['n_seeds']})")
    said = " or ".join(parts)
    if finite(d.get("value")) and finite(d.get("margin")) and abs(d["value"]) >= d["margin"]:
        return (" (the observed difference is at or beyond δ, so more data would not be expected to show "
                "equivalence)" + (f"; {said} would show it non-zero if it stays as observed" if said else ""))
    return f"; {said} would bring the 90% interval within ±δ if the difference stays as observed" if said else ""


def decision_sentence(arm: str, metric: str, d: dict, arm_rec: dict | None = None,
                      full_rec: dict | None = None, unit: str = "evaluation units") -> str:
    """One arm against full fine-tuning on one metric: the paired difference and its decision."""
    who, m = _cap(arm_label(arm)), metric_label(metric)
    if is_record(arm_rec) and is_record(full_rec):
        head = (f"{who} leaves {_article(m)} {m} of {value_ci(arm_rec)} against "
                f"{value_ci(full_rec, label='')} for full fine-tuning; ")
    else:
        head = f"{who} minus full fine-tuning on {m}: "
    body = "difference " + value_ci(d, signed=True)
    if finite(d.get("lo90")) and finite(d.get("hi90")):
        dec = places(d.get("value"), d.get("lo"), d.get("hi"))
        sep = " to " if min(d["lo90"], d["hi90"]) < 0 else "–"
        body = body[:-1] + f"; 90% CI {num(d['lo90'], True, dec)}{sep}{num(d['hi90'], True, dec)})"
    what, delta = d.get("decision"), num(d.get("margin"))
    if what == "equivalent":
        tail = f"equivalent within δ = {delta} (the 90% interval lies inside ±δ)"
    elif what in ("better", "worse", "higher", "lower"):
        than = f"{what} than full fine-tuning"
        tail = (than + f", by more than δ = {delta}" if d.get("beyond_margin")
                else than + f", possibly by less than δ = {delta}")
    elif what == "inconclusive":
        tail = f"inconclusive at δ = {delta}" + _more_data_clause(d, unit)
    elif what == "no margin":
        tail = "no margin is set for this metric (evaluation.margins), so no decision is made"
    else:
        tail = "the interval is undefined, so no decision is made"
    return head + body + ": " + tail + "."


def decided_metrics(decisions: dict[str, dict[str, dict]], order: list[str] | None = None) -> list[str]:
    """Metrics with a decision: those of ``order`` first, in that order, then the rest as met."""
    seen = {m for recs in decisions.values() for m in recs}
    out = [m for m in order or [] if m in seen]
    for recs in decisions.values():
        out += [m for m in recs if m not in out]
    return out


def verdict_table(decisions: dict[str, dict[str, dict]], order: Any = None,
                  metrics: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Arm × headline metric → decision with the difference and its 95% interval; columns follow
    ``metrics`` where given."""
    metrics = decided_metrics(decisions, metrics)
    arms = sorted(decisions, key=order or (lambda a: a))
    rows = [[arm, *[decision_cell(decisions[arm][m]) if m in decisions[arm] else "-" for m in metrics]]
            for arm in arms]
    return ["arm", *metrics], rows


def recommended_ranks(decisions: dict[str, dict[str, dict]]) -> dict[str, int | None]:
    """Per LoRA variant, the smallest rank equivalent to full on every metric that has a margin
    (``equivalence.rank_recommendation``); None: none established."""
    metrics = [m for m in decided_metrics(decisions)
               if any((r.get(m) or {}).get("decision") != "no margin" for r in decisions.values())]
    by_variant: dict[str, dict[str, int]] = {}
    for arm in decisions:
        variant, rank = arm_rank(arm)
        if rank is not None:
            by_variant.setdefault(variant, {})[arm] = rank
    return {v: rank_recommendation(decisions, ranks, metrics) for v, ranks in sorted(by_variant.items())}


def rank_sentence(decisions: dict[str, dict[str, dict]]) -> str | None:
    found = recommended_ranks(decisions)
    if not found:
        return None
    parts = []
    for variant, rank in found.items():
        text = f"r = {rank}" if rank is not None else "none established"
        parts.append(text + (f" ({VARIANT_LABELS.get(variant, variant)})" if len(found) > 1 else ""))
    return ("Smallest rank equivalent to full fine-tuning within δ on every headline metric: "
            + "; ".join(parts) + ".")


def decision_sentences(decisions: dict[str, dict[str, dict]], pooled: dict[str, dict[str, dict]],
                       order: Any = None, unit: str = "evaluation units") -> list[str]:
    """A sentence per (arm, metric) decision, arms in ``order``, metrics in ``pooled``'s order."""
    full = pooled.get("full") or {}
    metrics = decided_metrics(decisions, [m for recs in pooled.values() for m in recs])
    out = []
    for arm in sorted(decisions, key=order or (lambda a: a)):
        for metric in (m for m in metrics if m in decisions[arm]):
            out.append(decision_sentence(arm, metric, decisions[arm][metric],
                                         (pooled.get(arm) or {}).get(metric), full.get(metric), unit))
    return out


def _seed_note(decisions: dict[str, dict[str, dict]]) -> list[str]:
    seeds = {d.get("n_seeds") for recs in decisions.values() for d in recs.values()}
    if seeds == {1}:
        return ["One training seed per arm: the intervals cover evaluation variation only, not how "
                "much a result would move with another training seed."]
    return []


def fit_warnings(best_val: dict[str, float], tolerance: float = FIT_TOLERANCE) -> list[str]:
    """Arms whose best validation loss is more than ``tolerance`` (relative) above the best arm's."""
    vals = {a: v for a, v in best_val.items() if finite(v)}
    if len(vals) < 2:
        return []
    best_arm = min(vals, key=vals.get)
    best = vals[best_arm]
    out = []
    for arm, v in vals.items():
        rel = (v - best) / abs(best) if best != 0 else math.inf
        if arm != best_arm and rel > tolerance:
            what = "rank" if arm_rank(arm)[1] is not None else "the method"
            out.append(f"Fit check: {arm_label(arm)} reached a best validation loss of {num(v)}, "
                       f"{100 * rel:.0f}% above the best arm ({arm_label(best_arm)}, {num(best)}); "
                       f"its differences may reflect training rather than {what}.")
    return out


def failure_sentences(failed: dict[tuple[str, int], dict]) -> list[str]:
    out = []
    for (arm, seed), info in sorted(failed.items()):
        step, lr = info.get("step"), info.get("lr")
        out.append(f"{_cap(arm_label(arm))} (seed {seed}) diverged"
                   + (f" at step {step}" if step is not None else "")
                   + (f" with learning rate {lr:g}" if finite(lr) else "")
                   + "; it has no results.")
    return out


def shift_sentences(kl: dict | None) -> list[str]:
    """Shift captured per arm with its interval (from the KL analysis)."""
    out = []
    for arm, e in (kl or {}).items():
        sc = e.get("shift_captured") if isinstance(e, dict) else None
        if arm in ("base", "full") or not is_record(sc):
            continue
        out.append(f"{_cap(arm_label(arm))}: shift captured {value_ci(sc)}, where 1 − KL(full‖arm) / "
                   "KL(full‖base) is 1 for an arm as close to full fine-tuning as full itself and 0 for one "
                   "no closer than base.")
    return out


def verdict(compare: dict, pooled: dict, best_val: dict, failed: dict | None = None,
            kl: dict | None = None, order: Any = None) -> list[str]:
    """All verdict sentences in reading order: the rank recommendation, one sentence per decision,
    then shift captured, fit checks and failures. ``compare``: compare.json's content."""
    decisions = compare.get("decisions") or {}
    out = []
    if decisions:
        r = rank_sentence(decisions)
        out += [r] if r else []
        out += _seed_note(decisions)
        out += decision_sentences(decisions, pooled, order, compare.get("unit", "evaluation units"))
    elif compare.get("minus_full"):
        out.append("This run's compare.json has differences from full fine-tuning but no equivalence "
                   "decisions; run the study again with this version to decide them.")
    out += shift_sentences(kl)
    out += fit_warnings(best_val)
    out += failure_sentences(failed or {})
    return out
