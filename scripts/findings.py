"""The tables of docs/findings.md, computed from the committed results under results/.

docs/findings.md holds its numbers only inside generated blocks::

    <!-- findings:NAME -->
    ...table...
    <!-- /findings -->

``python scripts/findings.py`` rewrites every block from results/; ``--check`` exits 1 when a block
differs from what results/ gives (tests/test_findings.py runs it), so no number in the document can
drift from the files it comes from.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from lorafair.arms.names import arm_order
from lorafair.stats.equivalence import base_word, more_data
from lorafair.report.fmt import bracket, num
from lorafair.stats.metrics import paired_bootstrap_diff
from lorafair.report.load import Run, load_run

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- findings:(?P<name>[\w:.-]+) -->\n)(?P<body>.*?)(<!-- /findings -->)", re.S)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _arms(names) -> list[str]:
    return sorted(names, key=arm_order)


def decisions(run: Run) -> str:
    """arm − full per headline metric: difference [95% CI], the decision against δ."""
    cmp = run.compare
    dec, diffs, margins = cmp["decisions"], cmp["minus_full"], cmp["margins"]
    metrics = sorted({m for a in dec.values() for m in a})
    rows = []
    for arm in _arms(dec):
        row = [arm]
        for m in metrics:
            d = dec[arm].get(m)
            row.append("-" if d is None else f"{bracket(diffs[arm][m], signed=True)} {_word(d)}")
        rows.append(row)
    return _table(["arm − full"] + [f"{m} (δ {num(margins.get(m))})" for m in metrics], rows)


def _word(d: dict) -> str:
    w = base_word(d["decision"])  # "no verdict: did not fit" without its reason (the fit table has it)
    return f"**{w}{', beyond δ' if d.get('beyond_margin') else ''}**"


def pooled(run: Run) -> str:
    """Every arm pooled over seeds and prompts: value [95% CI]."""
    p = run.compare["pooled"]
    arms = _arms(a for a, v in p.items() if isinstance(v, dict))
    metrics = sorted(run.compare["margins"])
    metrics = [m for m in metrics if any(isinstance(p[a].get(m), dict) for a in arms)]
    return _table(["arm"] + metrics, [[a] + [bracket(p[a].get(m)) for m in metrics] for a in arms])


def more(run: Run) -> str:
    """For each inconclusive decision, what would settle it with the observed difference and variance
    components held fixed (``equivalence.more_data``): evaluation units (seeds as now) or training
    seeds (units as now) for the 90% interval to fit inside ±δ, or, where the observed difference is
    at or beyond δ, for the 95% interval to exclude zero. "-": that route alone cannot get there."""
    cmp = run.compare
    rows = []
    for arm in _arms(cmp["decisions"]):
        for m, d in sorted(cmp["decisions"][arm].items()):
            if d["decision"] != "inconclusive":
                continue
            diff = cmp["minus_full"][arm][m]
            need = more_data(diff, d["margin"]) or {}
            rows.append([arm, m, bracket(diff, signed=True), need.get("goal", "-"),
                         f"{need.get('units') or '-'} (now {diff.get('n_units', '-')})",
                         f"{need.get('seeds') or '-'} (now {diff.get('n_seeds', '-')})"])
    head = ["arm", "metric", "arm − full", "to show", "units needed", "seeds needed"]
    return _table(head, rows) if rows else "No decision is inconclusive.\n"


def fit(run: Run) -> str:
    """Per trained arm: the searched learning rate, whether the optimum was interior, and the best
    validation loss of each seed with the step it was reached at and the steps run."""
    rows = []
    for arm in _arms({a for a, _ in run.done}):
        done = [run.done[k] for k in sorted(k for k in run.done if k[0] == arm)]
        s = run.lr_search.get(arm, {})
        cands = ", ".join(f"{c['lr']:.3g}→{c['val_loss']:.3f}" for c in s.get("candidates", []))
        interior = {True: "yes", False: "no (edge)"}.get(s.get("interior"), "-")
        per_seed = "; ".join(f"{d['best_val_loss']:.3f} @ {d.get('best_step', '?')}/{d['steps']}"
                             f"{' (stopped early)' if d.get('stopped_early') else ''}" for d in done)
        rows.append([arm, f"{done[0]['lr']:.3g}", interior, cands or "-", per_seed])
    return _table(["arm", "lr", "interior optimum", "search: lr→val loss", "best val loss @ step/steps, per seed"],
                  rows)


def kl(run: Run) -> str:
    """Token-posterior divergences on held-out fine-tuning examples (first seed)."""
    rows = []
    for arm in _arms(run.kl):
        a = run.kl[arm]
        rows.append([arm, num(a["kl_full_arm"]["mean"]), num(a["kl_base_arm"]["mean"]),
                     bracket(a.get("shift_captured"))])
    return _table(["arm", "KL(full ‖ arm), mean", "KL(base ‖ arm), mean", "shift captured [95% CI]"], rows)


def kl_trend(run: Run, n_boot: int = 2000) -> str:
    """KL(full ‖ arm) between neighbouring ranks, paired by sequence (first seed): the per-sequence
    mean over positions, the difference lower rank − higher rank with a paired percentile bootstrap
    over sequences (seeded, so the table is reproducible). Positive: the divergence falls with rank."""
    import pandas as pd

    tok = pd.read_parquet(run.path / "analysis" / "kl_tokens.parquet")
    rows = []
    for name, part in tok.groupby("set", sort=True):
        per = part.groupby(["arm", "seq"])["kl_full_arm"].mean().unstack("arm")
        lora = [a for a in _arms(per.columns) if a not in ("base", "full")]
        for lo_arm, hi_arm in zip(["base"] + lora, lora):
            both = per[[lo_arm, hi_arm]].dropna()
            rec = paired_bootstrap_diff(both[lo_arm].to_numpy(), both[hi_arm].to_numpy(), n_boot=n_boot, seed=0)
            word = "falls" if rec["lo"] > 0 else "rises" if rec["hi"] < 0 else "undecided"
            rows.append([name, f"{lo_arm} − {hi_arm}", str(rec["n"]), bracket(rec, signed=True), word])
    return _table(["sequences", "KL(full ‖ ·): lower − higher rank", "n", "difference [95% CI]", "with rank"],
                  rows)


def spectrum(run: Run) -> str:
    """Full fine-tuning's update: energy kept by its best rank-r approximation; the recommendations."""
    e, r = run.weights["full_spectrum"]["energy_at_rank"], run.weights["recommendation"]
    line = _table(["rank r"] + list(e), [["energy kept"] + [num(v) for v in e.values()]])
    return line + (f"\nRank from the spectrum (energy ≥ {r['threshold']}): {r['rank_from_spectrum']}; "
                   f"smallest rank of the grid {r['ranks_tried']} whose measured shift captured reaches "
                   f"{r['threshold']}: {r['rank_measured']}.\n")


def counterfactual(run: Run) -> str:
    """Counterfactual divergence D (JS) per arm, the share of full fine-tuning's reduction of D from
    base, arm − full with its decision against the margin, and what would settle an inconclusive one."""
    c = run.counterfactual
    decisions = c.get("decisions") or {}
    per_seed = run.evals.get("counterfactual", {})
    rows = []
    for arm in _arms(c["arms"]):
        a, d = c["arms"][arm], (decisions.get(arm) or {}).get("cf_js")
        need = more_data(a["minus_full"], d["margin"]) if d and d["decision"] == "inconclusive" else None
        settle = (f"{need['goal']}: {need['units'] or '-'} templates (now {need['n_units']}) or "
                  f"{need['seeds'] or '-'} seeds (now {need['n_seeds']})") if need else "-"
        seeds = [per_seed[k]["metrics"]["cf_js"]["value"] for k in sorted(k for k in per_seed if k[0] == arm)]
        rows.append([arm, bracket(a["js"]), ", ".join(num(v) for v in seeds), bracket(a.get("reduction_share")),
                     bracket(a.get("minus_full"), signed=True),
                     f"{_word(d)} (δ {num(d['margin'])})" if d else "-", settle])
    return _table(["arm", "D (JS, nats)", "D per seed", "share of full's reduction", "arm − full", "decision",
                   "to settle"],
                  rows)


def cost(run: Run) -> str:
    """Wall time of each stage of the run."""
    stages = {k: v for k, v in run.timings.items() if isinstance(v, (int, float))}
    rows = [[k, f"{v / 60:.1f}"] for k, v in stages.items()]
    rows.append(["total", f"{sum(stages.values()) / 60:.1f}"])
    return _table(["stage", "minutes"], rows)


KINDS = {"decisions": decisions, "pooled": pooled, "more": more, "fit": fit, "kl": kl, "kl-trend": kl_trend, "spectrum": spectrum,
         "counterfactual": counterfactual, "cost": cost}


def render(name: str, results: Path, runs: dict[str, Run] | None = None) -> str:
    """Block ``KIND:STUDY`` from ``results/STUDY``; ``runs`` keeps each study read once across blocks."""
    kind, _, study = name.partition(":")
    if kind not in KINDS or not (results / study).is_dir():
        raise SystemExit(f"findings block {name!r}: unknown kind or no folder {results / study}")
    runs = {} if runs is None else runs
    if study not in runs:
        runs[study] = load_run(results / study)
    return KINDS[kind](runs[study])


def update(doc: str, results: Path) -> str:
    runs: dict[str, Run] = {}
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name"), results, runs) + m.group(4), doc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "findings.md")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--check", action="store_true", help="exit 1 when a block differs from results/")
    a = ap.parse_args(argv)
    doc = a.doc.read_text()
    new = update(doc, a.results)
    if a.check:
        stale = [m.group("name") for m, n in zip(BLOCK.finditer(doc), BLOCK.finditer(new)) if m.group(0) != n.group(0)]
        if stale:
            print(f"{a.doc}: blocks differ from {a.results}: {', '.join(stale)}; run python scripts/findings.py")
            return 1
        return 0
    a.doc.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
