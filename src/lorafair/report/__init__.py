"""The report of a run, built from its result files only (never a model):
``<run>/report/report.html`` (self-contained), ``summary.md`` and the PNG plots.

- :func:`build_report` — one run directory;
- :func:`build_comparison` — several studies side by side (e.g. the same task on two models).
"""

from __future__ import annotations

from pathlib import Path

from lorafair.store import rundir as store
from lorafair.arms.names import arm_order, arm_rank
from lorafair.errors import UserError
from lorafair.study import stages
from lorafair.report import bias
from lorafair.report import html as H
from lorafair.report import plots
from lorafair.report import sequential
from lorafair.report.load import (Run, best_val_loss, group_records, headline_names,
                                  is_record, lens_table, load_run, pooled_metrics)
from lorafair.report.fmt import cell, num, value_ci
from lorafair.report.audit import HEADER as AUDIT_HEADER, NOTE as SCORER_NOTE, audit_row, scorer_warnings
from lorafair.report.forest import decision_colours, forest
from lorafair.report.verdict import (decided_metrics, margin_shares, primary_of, verdict, verdict_parts,
                                     verdict_table)
from lorafair.stats.equivalence import base_word
from lorafair.report.summary import SECOND_NOTE, second_scorer_table

Figure = tuple[str, str, bytes]  # (file name, caption, PNG bytes)


def _tasks(run: Run) -> list[str]:
    return sorted(run.evals, key=lambda t: (t != run.task, t))


def _unit(pooled: dict[str, dict[str, dict]], metric: str) -> str:
    return next((r.get("unit", "") for a in pooled.values() for m, r in a.items() if m == metric), "")


def _shift_by_variant(kl: dict | None) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for arm, e in (kl or {}).items():
        variant, r = arm_rank(arm)
        if r is not None and isinstance(e, dict) and is_record(e.get("shift_captured")):
            out.setdefault(variant, {})[r] = e["shift_captured"]
    return out


def task_sections(run: Run) -> list[tuple[str, list[Figure]]]:
    """(section title, figures) drawn by each evaluated task's own report hook."""
    from lorafair.tasks import report_hook

    out = []
    for task in _tasks(run):
        hook = report_hook(task)
        if hook is not None:
            title, figs = hook(run, task)
            if figs:
                out.append((title, figs))
    return out


def figures(run: Run) -> dict[str, list[Figure]]:
    """Every plot whose data exists, grouped by report section."""
    out: dict[str, list[Figure]] = {"metrics": [], "groups": [], "shift": [], "training": []}

    def add(section: str, name: str, caption: str, png: bytes | None) -> None:
        if png:
            out[section].append((name, caption, png))

    for task in _tasks(run):
        pooled = pooled_metrics(run, task)
        for m in headline_names(run, task):
            data = {arm: recs[m] for arm, recs in pooled.items() if m in recs}
            add("metrics", f"{task}-{m}-vs-rank.png", f"{task}: {m} against LoRA rank",
                plots.metric_vs_rank(m, {run.name: data}, _unit(pooled, m)))
        add("groups", f"{task}-groups.png", f"{task}: per-group measures per arm",
            plots.group_bars(group_records(run, task), title=task))
    lens = lens_table(run)
    if lens is not None:
        mass = next((c for c in ("toxic_mass", "toxic_mass_last", "toxic_mass_mean") if c in lens.columns), None)
        if mass:
            add("shift", "lens-toxic-mass.png", "Logit Lens: probability mass on toxic tokens, layer × arm",
                plots.lens_heatmap(lens, mass))
        add("shift", "lens-kl-base.png", "Logit Lens: KL to the same layer of base, layer × arm",
            plots.lens_heatmap(lens, "kl_base"))
    if run.kl:
        add("shift", "shift-vs-rank.png", "Shift captured and token KL against rank", plots.shift_vs_rank(run.kl))
    energy = ((run.weights or {}).get("full_spectrum") or {}).get("energy_at_rank")
    if energy:
        add("shift", "spectrum-energy.png", "Full fine-tuning's update energy kept at rank r, and LoRA's "
            "measured shift captured", plots.spectrum_energy(energy, _shift_by_variant(run.kl)))
    for s in stages.with_results():  # analyses whose table entry names a figure drawn from their data alone
        if s.figure and run.results.get(s.name) is not None:
            add("shift", s.figure[0], s.figure[1], stages.resolve(s.plot)(run.results[s.name]))
    add("training", "loss-curves.png", "Training and validation loss", plots.loss_curves(run.train_logs, run.val_curves))
    return out


def _weights_html(weights: dict | None) -> str:
    arms = (weights or {}).get("arms")
    parts = []
    if isinstance(arms, dict) and arms:
        cols = sorted({c for e in arms.values() if isinstance(e, dict) for c in e})
        rows = [[a, *[cell(arms[a].get(c)) for c in cols]] for a in sorted(arms, key=arm_order)]
        parts.append(H.table(["arm", *cols], rows))
    rec = (weights or {}).get("recommendation")
    if isinstance(rec, dict) and rec:
        parts.append(H.table(["recommendation", "value"], [[k, cell(v)] for k, v in rec.items()]))
    return "".join(parts)


def run_verdict(run: Run) -> list[str]:
    """The verdict sentences of a loaded run (its study's task, or the first task evaluated)."""
    task = _main_task(run)
    if task is None:
        return []
    return verdict(run.compare, pooled_metrics(run, task), best_val_loss(run), run.failed, run.kl,
                   order=arm_order)


def _main_task(run: Run) -> str | None:
    return run.task if run.task in run.evals else (_tasks(run) or [None])[0]


TABLE_NOTE = ("Each cell: the decision for arm − full fine-tuning, the difference and its 95% interval. "
              "Equivalent: the 90% interval lies inside ±δ; worse/better: the difference is non-zero (95% "
              "interval excludes 0; for primary metrics, Holm-adjusted over arms × primary metrics), >δ: "
              "beyond the margin too; worse/better, within δ: both; uninformative (floor): too few events in "
              "both arms (for a gap: a group with too few expected events); no verdict: the arm did not fit "
              "(reasons below). Primary metrics are marked *; the rest "
              "are secondary.")


def _verdict_section(run: Run) -> tuple[str, list[str], list[Figure]]:
    """The verdict as HTML and Markdown: the forest plot, the decision table, the sentences that
    concern the whole run, δ against the fine-tuning effect, then the per-metric detail (collapsible
    in HTML). Every sentence once. Also returns the forest plot as a figure to write."""
    task = _main_task(run)
    decisions = run.compare.get("decisions") or {}
    if task is None:
        return "<p>No evaluated arms yet.</p>", ["No evaluated arms yet.", ""], []
    head, detail, tail = verdict_parts(run.compare, pooled_metrics(run, task), best_val_loss(run), run.failed,
                                       run.kl, order=arm_order)
    html, md, figs = "", [], []
    marked = [m for m in decided_metrics(decisions) if any((r.get(m) or {}).get("primary") for r in decisions.values())]
    if decisions:
        primary = primary_of(decisions)
        png = forest(decisions, primary)
        if png:
            figs.append(("verdict-forest.png", "Arm − full fine-tuning on the primary metrics, coloured by decision",
                         png))
            html += H.figure(figs[0][1], png)
            md += ["![forest plot: arm − full on the primary metrics](verdict-forest.png)", ""]
        header, rows = verdict_table(decisions, arm_order, headline_names(run, task))
        colours = [[None, *[decision_colours(((decisions.get(r[0]) or {}).get(m) or {}).get("decision"))[1]
                            if c != "-" else None for m, c in zip(header[1:], r[1:])]] for r in rows]
        header = [f"{h} *" if h in marked else h for h in header]
        html += H.coloured_table(header, rows, colours) + f"<p>{H.esc(TABLE_NOTE)}</p>"
        md += [H.md_table(header, rows), "", TABLE_NOTE, ""]
    html += H.bullets(head) if head else ""
    md += [f"- {s}" for s in head] + ([""] if head else [])
    shares = margin_shares(decisions, decided_metrics(decisions)) if decisions else []
    if shares:
        sh = ["metric", "δ", "base − full", "δ / |base − full|"]
        srows = [[r["metric"] + (" *" if r["metric"] in marked else ""), num(r["delta"]),
                  num(r["effect"], True) if r["effect"] is not None else "-",
                  f"{100 * r['share']:.0f}%" if r["share"] is not None else "-"] for r in shares]
        note = ("Margins against the fine-tuning effect this study measured (base − full, seeds pooled); "
                "docs/measures.md gives each default's source.")
        html += H.table(sh, srows) + f"<p>{H.esc(note)}</p>"
        md += [H.md_table(sh, srows), "", note, ""]
    if detail:
        html += "<h3>Per-metric detail</h3>"
        md += ["### Per-metric detail", ""]
        for m, ss in detail.items():
            label = f"{m} ({'primary' if m in marked else 'secondary'})" if marked else m
            html += H.details(label, H.bullets(ss))
            md += [f"**{label}**", ""] + [f"- {s}" for s in ss] + [""]
    html += H.bullets(tail) if tail else ""
    md += [f"- {s}" for s in tail] + ([""] if tail else [])
    if not (decisions or head or tail):
        html += "<p>No evaluated arms yet.</p>"
    return html, md, figs


GAP_NOTE = ("raw: largest minus smallest group value; null: its mean when group labels are permuted "
            "(within templates for identity prompts; what noise alone gives); excess: raw − null with its "
            "95% null band (raw minus the upper and lower 2.5% tails of the permuted gaps: what noise gives, "
            "not a confidence interval); p: permutation p-value of the between-group variance. Groups "
            "present in fewer than evaluation.min_group_templates templates (evaluation.min_group_size "
            "prompts or rows where prompts name no template) are left out (see the warnings); a rate's gap "
            "marked floor has a group expecting fewer than evaluation.min_group_events events at the "
            "pooled rate, and says nothing about the groups. Identity terms neutralised: "
            "the same gap with every continuation scored again after its identity terms were replaced by "
            "a neutral placeholder, so the difference between the two is the scorer reacting to the "
            "identity word.")


def _gap_rows(run: Run) -> tuple[list[str], list[list[object]]]:
    """Per task, arm, seed and measure: the group gap next to its permutation null."""
    rows: list[list[object]] = []
    for task in _tasks(run):
        for (arm, seed), s in sorted(run.evals[task].items(), key=lambda kv: (arm_order(kv[0][0]), kv[0][1])):
            neutral = ((s.get("neutral") or {}).get("gaps") or {})
            for m, r in (s.get("gaps") or {}).items():
                if is_record(r) and "raw_gap" in r:
                    nr = neutral.get(m) or {}
                    rows.append([arm, seed, m, num(r["raw_gap"]), num(r.get("null_gap")),
                                 value_ci(r, signed=True, label="") + (" (floor)" if r.get("floor") else ""),
                                 num(r.get("p_value")),
                                 f"{r.get('max_group')} − {r.get('min_group')}",
                                 f"{num(nr['raw_gap'])} (excess {num(nr.get('value'), True)})" if "raw_gap" in nr else "-"])
    return ["arm", "seed", "measure", "raw", "null", "excess [95% null band]", "p", "max − min group",
            "raw, identity terms neutralised"], rows


def _eval_warnings(run: Run) -> list[str]:
    """The evaluation summaries' own warnings (small groups, undefined rates), once each."""
    out: list[str] = []
    for task in _tasks(run):
        for (arm, seed), s in sorted(run.evals[task].items()):
            for w in s.get("warnings") or []:
                line = f"{task}, {arm} seed {seed}: {w}"
                if line not in out:
                    out.append(line)
    return out


def _write_figures(folder: Path, figs: list[Figure], prune: bool = False) -> None:
    """Write the PNGs; ``prune`` removes PNGs of an earlier build that no longer have data."""
    keep = {name for name, _, _ in figs}
    for old in folder.glob("*.png") if prune else ():
        if old.name not in keep:
            old.unlink()
    for name, _, png in figs:
        store.write_bytes(folder / name, png)


def build_report(run_dir: Path) -> Path:
    """Write ``<run>/report/{report.html, summary.md, *.png}``; returns the HTML's path."""
    run = load_run(run_dir)
    figs = figures(run)
    verdict_html, verdict_md, verdict_figs = _verdict_section(run)
    sections, md = [("Verdict", verdict_html)], [f"# {run.name}: lorafair report", "", "## Verdict", ""]
    md += verdict_md
    plan_html, plan_md = sequential.section(run.compare or {})
    if plan_html:
        sections.append(("Run until decided", plan_html))
        md += plan_md
    warns = _eval_warnings(run) + scorer_warnings(run.scorer_audit, run.evals.get(_main_task(run) or "", {}))
    if warns:
        sections.append(("Warnings from evaluation", H.bullets(warns, "warn")))
        md += ["## Warnings from evaluation", ""] + [f"- {w}" for w in warns] + [""]
    metric_html = []
    for task in _tasks(run):
        names = headline_names(run, task)
        header, rows = ["arm", "seeds", *names], H.metric_rows(pooled_metrics(run, task), names)
        metric_html.append(f"<h3>{H.esc(task)}</h3>" + H.table(header, rows))
        md += [f"## {task}: metrics (95% intervals, seeds pooled)", "", H.md_table(header, rows), ""]
        second_header, second = second_scorer_table(run.evals.get(task, {}))
        if second:
            title = f"{task}: a second scorer on the same continuations, and its agreement with the evaluation scorer"
            metric_html.append(f"<h3>{H.esc(title)}</h3>" + H.table(second_header, second))
            metric_html.append(f"<p>{H.esc(SECOND_NOTE)}</p>")
            md += [f"## {title}", "", H.md_table(second_header, second), "", SECOND_NOTE, ""]
    sections.append(("Headline metrics", "".join(metric_html) + "".join(H.figure(c, p) for _, c, p in figs["metrics"])))
    if run.scorer_audit:
        rows = [audit_row(a) for a in run.scorer_audit.values()]
        sections.append(("Scorers: how far to trust them", H.table(AUDIT_HEADER, rows) + f"<p>{H.esc(SCORER_NOTE)}</p>"))
        md += ["## Scorers: how far to trust them", "", H.md_table(AUDIT_HEADER, rows), "", SCORER_NOTE, ""]
    gap_header, gap_rows = _gap_rows(run)
    gap_html = ""
    if gap_rows:
        gap_html = (H.table(gap_header, gap_rows) + f"<p>{H.esc(GAP_NOTE)}</p>")
        md += ["## Group gaps", "", H.md_table(gap_header, gap_rows), "", GAP_NOTE, ""]
    sections.append(("Groups", gap_html + "".join(H.figure(c, p) for _, c, p in figs["groups"])))
    bias_html, bias_md, bias_figs = bias.section(run)
    if bias_html:
        sections.append(("Counterfactual divergence and BBQ", bias_html))
        md += bias_md
    sections.append(("Where the shift went: KL, Logit Lens, weight space",
                     "".join(H.figure(c, p) for _, c, p in figs["shift"]) + _weights_html(run.weights)))
    own = task_sections(run)
    sections += [(title, "".join(H.figure(c, p) for _, c, p in fs)) for title, fs in own]
    train_rows = H.training_rows(run)
    sections.append(("Training", (H.table(H.TRAINING_HEADER, train_rows) if train_rows else "")
                     + "".join(H.figure(c, p) for _, c, p in figs["training"])))
    if train_rows:
        md += ["## Learning rate and fit per arm", "", H.md_table(H.TRAINING_HEADER, train_rows), ""]
    prov = H.provenance(run)
    sections.append(("Provenance", H.table(["what", "value"], [list(p) for p in prov])))
    md += ["## Provenance", "", H.md_table(["what", "value"], [list(p) for p in prov]), ""]
    out = store.RunDir(run.path).report_dir()
    all_figs = verdict_figs + [f for fs in figs.values() for f in fs] + [f for _, fs in own for f in fs] + bias_figs
    _write_figures(out, all_figs, prune=True)
    md += ["## Plots", ""] + [f"- [{c}]({n})" for n, c, _ in all_figs] + [""]
    store.write_text(out / "summary.md", "\n".join(md))
    store.write_text(out / "report.html", H.page(f"{run.name}: lorafair report", sections))
    return out / "report.html"


def _labels(runs: list[Run]) -> list[str]:
    labels = [r.name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.name} ({r.path.name})" for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    return labels


def build_comparison(run_dirs: list[Path], out_dir: Path) -> Path:
    """Several studies side by side: a combined table and a combined metric-vs-rank plot per metric.

    Writes ``<out_dir>/{report.html, summary.md, *.png}``; returns the HTML's path.
    """
    if not run_dirs:
        raise UserError("compare: no run directories given; pass two or more study output folders")
    runs = [load_run(d) for d in run_dirs]
    labels = _labels(runs)
    tasks = sorted({t for r in runs for t in r.evals})
    sections, md, figs = [], ["# lorafair comparison", ""], []
    for task in tasks:
        names: list[str] = []
        for r in runs:
            names += [n for n in headline_names(r, task) if n not in names]
        pooled = {lab: pooled_metrics(r, task) for lab, r in zip(labels, runs) if task in r.evals}
        header = ["study", "model", "arm", "seeds", *names]
        rows = []
        for lab, r in zip(labels, runs):
            if lab in pooled:
                rows += H.metric_rows(pooled[lab], names, [lab, (r.study.get("model") or {}).get("source", "-")])
        parts = [H.table(header, rows)]
        md += [f"## {task}", "", H.md_table(header, rows), ""]
        for m in names:
            data = {lab: {a: recs[m] for a, recs in p.items() if m in recs} for lab, p in pooled.items()}
            png = plots.metric_vs_rank(m, data, _unit(next(iter(pooled.values())), m))
            if png:
                name = f"{task}-{m}-vs-rank.png"
                figs.append((name, f"{task}: {m} against LoRA rank, all studies", png))
                parts.append(H.figure(figs[-1][1], png))
        sections.append((f"{task}: studies side by side", "".join(parts)))
    for lab, r in zip(labels, runs):
        verdict_html, verdict_md, _ = _verdict_section(r)
        verdict_md = [line for line in verdict_md if not line.startswith("![forest")]  # its PNG is not written here
        sections.append((f"Verdict: {lab}", verdict_html))
        md += [f"## Verdict: {lab}", ""] + verdict_md
    prov = [[lab, w, v] for lab, r in zip(labels, runs) for w, v in H.provenance(r)]
    sections.append(("Provenance", H.table(["study", "what", "value"], prov)))
    out = Path(out_dir)
    _write_figures(out, figs)
    store.write_text(out / "summary.md", "\n".join(md))
    store.write_text(out / "report.html", H.page("lorafair comparison: " + ", ".join(labels), sections))
    return out / "report.html"


__all__ = ["build_report", "build_comparison", "figures", "run_verdict"]
