"""Report parts for group dependence: the counterfactual divergence (table, plots) and the BBQ table."""

from __future__ import annotations

import pandas as pd

from lorafair.report import html as H
from lorafair.report import plots
from lorafair.arms.names import arm_order
from lorafair.report.load import Run
from lorafair.report.verdict import decision_cell
from lorafair.report.fmt import bracket, value_ci

CF_COLUMNS = [("js", "JS divergence"), ("kl_ab", "KL(a‖b)"), ("kl_ba", "KL(b‖a)"),
              ("minus_full", "JS, arm − full"), ("reduction_share", "share of full's reduction")]
BBQ_STATS = [("accuracy_ambiguous", "accuracy, ambiguous"), ("accuracy_disambiguated", "accuracy, disambiguated"),
             ("bias_score_ambiguous", "bias score, ambiguous"), ("bias_score_disambiguated", "bias score, disambiguated")]


def counterfactual_table(run: Run) -> tuple[list[str], list[list[object]], list[str]]:
    """(header, rows, caveats) of the pooled counterfactual divergence, one row per arm."""
    cf = run.counterfactual or {}
    arms, decisions = cf.get("arms") or {}, run.cf_decisions
    header = ["arm", *[label for _, label in CF_COLUMNS], f"decision (δ = {(cf.get('margins') or {}).get('cf_js')})"]
    rows, caveats = [], []
    for arm in sorted(arms, key=arm_order):
        e = arms[arm]
        decided = decisions.get(arm)
        rows.append([arm, *[value_ci(e[key], signed=key == "minus_full", label="") if e.get(key) else "-"
                             for key, _ in CF_COLUMNS], decision_cell(decided) if decided else "-"])
        if e.get("caveat") and not caveats:
            caveats.append(e["caveat"])
    return header, rows, caveats


def counterfactual_figures(run: Run) -> list[tuple[str, str, bytes]]:
    """The layer × arm heatmap of the divergence on a log colour scale (JS against rank, with base and
    full as reference lines, is among the headline plots of the "counterfactual" results)."""
    layers = pd.DataFrame((run.counterfactual or {}).get("by_layer") or [])
    if layers.empty:
        return []
    png = plots.lens_heatmap(layers.rename(columns={"value": "js"}), "js", log=True,
                             title="Counterfactual JS divergence per Logit Lens layer")
    return [("cf-js-layers.png", "Counterfactual divergence through the Logit Lens, layer × arm (log colour scale)",
             png)] if png else []


def bbq_table(run: Run) -> tuple[list[str], list[list[object]]]:
    """(header, rows): BBQ accuracy and bias score per arm × seed × category, with 95% intervals."""
    header = ["arm", "seed", "category", "items", *[label for _, label in BBQ_STATS]]
    rows = []
    for (arm, seed), s in sorted((run.evals.get("probes") or {}).items(), key=lambda kv: (arm_order(kv[0][0]), kv[0][1])):
        cats = ((s.get("by_bias_type") or {}).get("bbq")) or {}
        for cat, c in sorted(cats.items()):
            rows.append([arm, seed, cat, c.get("n"),
                         *[bracket({"value": c[k]["value"], "lo": c[k]["low"], "hi": c[k]["high"]}) for k, _ in BBQ_STATS]])
    return header, rows


def section(run: Run) -> tuple[str, list[str], list[tuple[str, str, bytes]]]:
    """(HTML, Markdown lines, figures) of the group-dependence section; empty when there is no data."""
    parts, md = [], []
    header, rows, caveats = counterfactual_table(run)
    if rows:
        cf = run.counterfactual or {}
        note = (f"Jensen-Shannon divergence and KL both ways (nats) between the next-token distributions of "
                f"prompts that differ only in the identity term, over {cf.get('n_templates')} templates; "
                f"95% intervals: {cf.get('interval')}.")
        parts.append(f"<p>{H.esc(note)}</p>" + H.table(header, rows)
                     + (H.bullets(caveats, "warn") if caveats else ""))
        md += ["## Counterfactual divergence", "", note, "", H.md_table(header, rows), ""]
        md += [f"- {c}" for c in caveats] + ([""] if caveats else [])
    figs = counterfactual_figures(run)
    parts += [H.figure(c, p) for _, c, p in figs]
    header, rows = bbq_table(run)
    if rows:
        note = ("BBQ (Parrish et al. 2022): options scored by mean log-probability per token; bias scores only "
                "for items that carry BBQ's polarity and target labels (n/a otherwise).")
        parts.append(f"<h3>BBQ</h3><p>{H.esc(note)}</p>" + H.table(header, rows))
        md += ["## BBQ", "", note, "", H.md_table(header, rows), ""]
    return "".join(parts), md, figs
