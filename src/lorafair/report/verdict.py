"""The verdict: a table and sentences generated from the decisions in compare.json, nothing else.

Rules:
- each arm is compared with full fine-tuning through the paired difference arm − full and its
  decision (``lorafair.stats.equivalence``): *equivalent* within the metric's margin δ when the 90%
  interval lies inside ±δ; *better*/*worse* (*higher*/*lower* without a direction) when it is
  non-zero (95% interval; Holm-adjusted over arms × primary metrics for a primary metric), saying
  whether it also exceeds δ, and *worse, within δ* / *better, within δ* when it is both; otherwise
  *inconclusive*, with a rough count of the evaluation units or training seeds that would settle it;
  *uninformative (floor)* for a rate with too few events in both arms (for a gap between groups: a
  group with too few expected events in both arms); *no verdict: did not fit* for
  an arm that failed the fit gate (``lorafair.stats.fit``);
- the rank recommendation is the smallest fitted rank equivalent on every primary metric (every
  metric with a margin when compare.json names none), or "none established"; it never rests on
  overlapping intervals;
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
from lorafair.stats.equivalence import (FLOOR, FLOOR_EVENTS, NO_FIT, WITHIN, base_word, exact_upper,
                                        rank_recommendation)

FIT_TOLERANCE = 0.05

def _cap(text: str) -> str:
    """Sentence start for an arm label; method names keep their own case (rsLoRA)."""
    return text[:1].upper() + text[1:] if text.startswith(("the ", "full ")) else text


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def metric_label(name: str) -> str:
    return name.replace("_", " ")


DECISION_LABELS = {"undefined": "no interval"}


def decision_label(d: dict) -> str:
    """``"worse >δ"`` / ``"equivalent"`` / ``"no verdict: did not fit"`` ...: the decision without
    its reason, marked when it exceeds the margin."""
    word = base_word(d.get("decision"))
    return DECISION_LABELS.get(word, word) + (" >δ" if d.get("beyond_margin") else "")


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


def _floor_clause(d: dict) -> str:
    exp = d.get("expected_events") or {}
    if d.get("floor") is True and all(isinstance(exp.get(k), dict) and exp[k] for k in ("arm", "full")):
        (ga, ea), (gf, ef) = (min(exp[k].items(), key=lambda kv: kv[1]) for k in ("arm", "full"))
        least = float(d.get("min_group_events") or 0)
        return (f": in both arms a group expects fewer than {least:g} events at that arm's rate pooled over "
                f"the groups (fewest: {ea:.1f} in {ga} for the arm, {ef:.1f} in {gf} for full fine-tuning), "
                "so the gap between groups cannot tell the arms apart")
    ev = d.get("events") or {}
    out = f": fewer than {FLOOR_EVENTS} events in both arms"
    if all(finite(ev.get(k)) for k in ("arm", "full", "n_arm", "n_full")):
        ua, uf = exact_upper(ev["arm"], ev["n_arm"]), exact_upper(ev["full"], ev["n_full"])
        out += (f" ({ev['arm']:.0f} of {ev['n_arm']:.0f} and {ev['full']:.0f} of {ev['n_full']:.0f}; exact 95% "
                f"upper bounds {num(ua)} and {num(uf)})")
    return out + ", so the interval cannot tell the arms apart"


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
    if d.get("p_holm") is not None:
        body += f"; Holm-adjusted p = {num(d['p_holm'], decimals=3)} over arms × primary metrics"
    if what == "equivalent":
        tail = f"equivalent within δ = {delta} (the 90% interval lies inside ±δ)"
    elif str(what).endswith(WITHIN):
        tail = (f"{what.split(',')[0]} than full fine-tuning, but by less than δ = {delta} (the difference is "
                "non-zero and its 90% interval lies inside ±δ)")
    elif base_word(what) == NO_FIT:
        tail = "no verdict: " + str(what)[len("no verdict: "):]
    elif what == FLOOR:
        tail = "uninformative (floor)" + _floor_clause(d)
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
    out = [m for m in dict.fromkeys(order or []) if m in seen]
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


def primary_of(decisions: dict[str, dict[str, dict]]) -> list[str]:
    """The primary metrics the decisions mark; every metric with a margin when none is marked (a
    compare.json written before primary metrics existed)."""
    marked = [m for m in decided_metrics(decisions) if any((r.get(m) or {}).get("primary") for r in decisions.values())]
    return marked or [m for m in decided_metrics(decisions)
                      if any((r.get(m) or {}).get("decision") != "no margin" for r in decisions.values() if m in r)]


def recommended_ranks(decisions: dict[str, dict[str, dict]]) -> dict[str, int | None]:
    """Per LoRA variant, the smallest rank equivalent to full on every primary metric
    (``equivalence.rank_recommendation``); None: none established."""
    metrics = primary_of(decisions)
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
    marked = any(r.get("primary") for recs in decisions.values() for r in recs.values())
    what = "primary metric (" + ", ".join(metric_label(m) for m in primary_of(decisions)) + ")" if marked \
        else "headline metric"
    return f"Smallest rank equivalent to full fine-tuning within δ on every {what}: " + "; ".join(parts) + "."


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
        line = (f"{_cap(arm_label(arm))}: shift captured {value_ci(sc)}, where 1 − KL(full‖arm) / "
                "KL(full‖base) is 1 for an arm as close to full fine-tuning as full itself and 0 for one "
                "no closer than base")
        bf = e.get("beyond_floor")
        if is_record(bf) and finite(bf.get("floor")):
            line += (f"; KL(full‖arm) is {bf['word']} (another seed of full: KL {bf['floor']:.3g}, shift captured "
                     f"{bf.get('floor_shift_captured', float('nan')):.3g}; arm − that: {value_ci(bf)})")
        out.append(line + ".")
    return out


def fit_gate_sentences(fit: dict | None) -> list[str]:
    """One sentence per arm that failed the fit gate, per arm that may be under-trained, and per arm
    with seeds that failed the task's check alone."""
    out = []
    for arm, g in sorted((fit or {}).items()):
        if not isinstance(g, dict):
            continue
        if not g.get("fitted", True):
            out.append(f"{_cap(arm_label(arm))} did not fit: {'; '.join(g.get('reasons') or [])}. It gets no verdict "
                       "on any metric and is never recommended.")
        if g.get("under_trained"):
            out.append(f"{_cap(arm_label(arm))} {g['under_trained']}.")
        if g.get("seeds_failing"):
            out.append(f"{_cap(arm_label(arm))}: {g['seeds_failing']}.")
    return out


def margin_shares(decisions: dict[str, dict[str, dict]], metrics: list[str]) -> list[dict]:
    """Per metric with a margin: δ next to the fine-tuning effect base − full measured in the study,
    and δ as a share of it (None where base − full is 0 or missing)."""
    out = []
    for m in metrics:
        d = (decisions.get("base") or {}).get(m) or {}
        delta = next((r[m].get("margin") for r in decisions.values() if m in r and finite(r[m].get("margin"))), None)
        if delta is None:
            continue
        effect = d.get("value")
        share = abs(delta / effect) if finite(effect) and effect != 0 else None
        out.append({"metric": m, "delta": delta, "effect": effect if finite(effect) else None, "share": share})
    return out


def margin_warnings(shares: list[dict]) -> list[str]:
    """A sentence for every margin wider than half the base → full effect."""
    return [f"The margin for {metric_label(r['metric'])} (δ = {num(r['delta'])}) is {100 * r['share']:.0f}% of the "
            f"fine-tuning effect measured here (base − full = {num(r['effect'], True)}): an arm that kept "
            "that much of the base model's difference could still be called equivalent."
            for r in shares if r["share"] is not None and r["share"] > 0.5]


def verdict_parts(compare: dict, pooled: dict, best_val: dict, failed: dict | None = None,
                  kl: dict | None = None, order: Any = None) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """The verdict in three parts: (head: rank recommendation, seed note, fit gate, margin warnings;
    detail: metric -> one sentence per arm's decision, primary metrics first; tail: shift captured,
    fit checks, failures). Every sentence appears once."""
    decisions = compare.get("decisions") or {}
    head: list[str] = []
    detail: dict[str, list[str]] = {}
    if decisions:
        r = rank_sentence(decisions)
        head += [r] if r else []
        head += _seed_note(decisions)
        head += fit_gate_sentences(compare.get("fit"))
        head += margin_warnings(margin_shares(decisions, primary_of(decisions)))
        primary = primary_of(decisions)
        metrics = decided_metrics(decisions, [*primary, *(m for recs in pooled.values() for m in recs)])
        unit = compare.get("unit", "evaluation units")
        full = pooled.get("full") or {}
        for m in metrics:
            detail[m] = [decision_sentence(arm, m, decisions[arm][m], (pooled.get(arm) or {}).get(m),
                                           full.get(m), unit)
                         for arm in sorted(decisions, key=order or (lambda a: a)) if m in decisions[arm]]
    elif compare.get("minus_full"):
        head.append("This run's compare.json has differences from full fine-tuning but no equivalence "
                    "decisions; run the study again with this version to decide them.")
    tail = shift_sentences(kl) + fit_warnings(best_val) + failure_sentences(failed or {})
    return head, detail, tail


def verdict(compare: dict, pooled: dict, best_val: dict, failed: dict | None = None,
            kl: dict | None = None, order: Any = None) -> list[str]:
    """All verdict sentences in reading order (:func:`verdict_parts`), each once."""
    head, detail, tail = verdict_parts(compare, pooled, best_val, failed, kl, order)
    return list(dict.fromkeys([*head, *(s for ss in detail.values() for s in ss), *tail]))
