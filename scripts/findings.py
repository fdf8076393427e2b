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
        gate = (run.compare.get("fit") or {}).get(arm)
        verdict = "-" if gate is None else "fitted" if gate.get("fitted") else "**did not fit**: " + "; ".join(gate["reasons"])
        if gate and gate.get("seeds_failing"):
            verdict += f"; {gate['seeds_failing']}"
        rows.append([arm, f"{done[0]['lr']:.3g}", interior, cands or "-", per_seed, verdict])
    return _table(["arm", "lr", "interior optimum", "search: lr→val loss", "best val loss @ step/steps, per seed",
                   "fit gate"], rows)


def kl(run: Run) -> str:
    """Token-posterior divergences on held-out fine-tuning examples, pooled over the seeds each arm
    has (crossed intervals over seeds × sequences), beside the noise floor: KL between two seeds of
    full fine-tuning, and each arm's excess over it."""
    rows = []
    for arm in _arms(run.kl):
        a = run.kl[arm]
        bf = a.get("beyond_floor") or {}
        rows.append([arm, str(len(a.get("seeds", []))), bracket(a["kl_full_arm"]), num(bf.get("floor")),
                     f"{bracket(bf, signed=True)} {bf['word']}" if bf else "-", bracket(a.get("shift_captured")),
                     num(bf.get("floor_shift_captured"))])
    return _table(["arm", "seeds", "KL(full ‖ arm) [95% CI]", "another seed of full: KL",
                   "arm − that [95% CI]", "shift captured [95% CI]", "another seed of full: shift captured"], rows)


def kl_trend(run: Run) -> str:
    """KL(full ‖ arm) between neighbouring ranks, token-weighted, paired by seed and sequence on the
    seeds both arms have, with the crossed interval (``analysis.seeds.rank_difference``). Positive:
    the divergence falls with rank."""
    import pandas as pd

    from lorafair.analysis.seeds import rank_difference

    seqs = pd.read_parquet(run.path / "analysis" / "kl_sequences.parquet")
    rows = []
    for name, part in seqs.groupby("set", sort=True):
        lora = [a for a in _arms(part["arm"].unique()) if a.startswith("lora-")]
        for lo_arm, hi_arm in zip(["base"] + lora, lora):
            rec = rank_difference(part, lo_arm, hi_arm)
            if rec is None:
                continue
            word = "falls" if rec["lo"] > 0 else "rises" if rec["hi"] < 0 else "undecided"
            rows.append([name, f"{lo_arm} − {hi_arm}", str(rec["n_seeds"]), bracket(rec, signed=True), word])
    return _table(["sequences", "KL(full ‖ ·): lower − higher rank", "seeds", "difference [95% CI]", "with rank"],
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
    decisions = run.cf_decisions
    per_seed = run.evals.get("counterfactual", {})
    rows = []
    for arm in _arms(c["arms"]):
        a, d = c["arms"][arm], decisions.get(arm)
        need = more_data(a["minus_full"], d["margin"]) if d and d["decision"] == "inconclusive" else None
        settle = (f"{need['goal']}: {need['units'] or '-'} templates (now {need['n_units']}) or "
                  f"{need['seeds'] or '-'} seeds (now {need['n_seeds']})") if need else "-"
        seeds = [per_seed[k]["metrics"]["cf_js"]["value"] for k in sorted(k for k in per_seed if k[0] == arm)]
        rows.append([arm, bracket(a["js"]), ", ".join(num(v) for v in seeds), bracket(a.get("reduction_share")),
                     bracket(a.get("minus_full"), signed=True),
                     f"{_word(d)} (δ {num(d['margin'])})" if d else "-", settle])
    floor = (c["arms"].get("full") or {}).get("noise_floor")
    note = (f"\nNoise floor: D of two consecutive seeds of full fine-tuning differs by {num(floor['value'])} on "
            f"average (at most {num(floor['max'])}).\n") if floor else ""
    return _table(["arm", "D (JS, nats)", "D per seed", "share of full's reduction", "arm − full", "decision",
                   "to settle"],
                  rows) + note


def tox_trend(run: Run) -> str:
    """Toxicity between neighbouring ranks, and lowest against highest: lower − higher rank, paired
    over the seeds both arms have and the prompts (the crossed-design difference compare.json uses
    for arm − full), for the primary toxic fraction and expected maximum toxicity. Positive: the lower
    rank is more toxic, i.e. toxicity falls with rank. Each comparison at 95%, not adjusted for the
    several comparisons."""
    from lorafair.stats import intervals
    from lorafair.store.rundir import RunDir
    from lorafair.tasks.toxicity import measures

    threshold = run.study["evaluation"]["threshold"]
    lora = [a for a in _arms(run.compare["pooled"]) if a.startswith("lora-")]
    rd, cells = RunDir(run.path), {}
    for arm in lora:
        frames = {s: got[1] for (a, s), _ in rd.seed_dirs() if a == arm
                  and (got := rd.read_eval(a, s, "toxicity")) is not None}
        cells[arm] = measures.toxicity_cells(frames, threshold)
    pairs = list(zip(lora, lora[1:])) + ([(lora[0], lora[-1])] if len(lora) > 2 else [])
    rows = []
    for lo_arm, hi_arm in pairs:
        diff = measures.crossed_toxicity_diff(*intervals.pair_cells(cells[lo_arm], cells[hi_arm]))
        for m in ("toxic_fraction", "expected_max_toxicity"):
            d = diff[m]
            word = "falls" if d["lo"] > 0 else "rises" if d["hi"] < 0 else "undecided"
            rows.append([f"{lo_arm} − {hi_arm}", m, str(d["n_seeds"]), bracket(d, signed=True), word])
    return _table(["lower − higher rank", "metric", "seeds", "difference [95% CI]", "toxicity with rank"], rows)


def gaps(run: Run) -> str:
    """Each arm's own group gap per seed against what noise alone gives: max − min over groups
    (raw), its mean under permuted group labels (null), the excess raw − null with its null band, the
    permutation p-value of the between-group variance, and the raw gap of the scorer-bias control
    (identity terms replaced by a neutral word before scoring)."""
    rows = []
    tox = run.evals.get("toxicity", {})
    for arm in _arms({a for a, _ in tox}):
        for key in sorted(k for k in tox if k[0] == arm):
            ev = tox[key]
            neutral = (ev.get("neutral") or {}).get("gaps") or {}
            for m in ("expected_max_toxicity", "mean_score"):
                g = (ev.get("gaps") or {}).get(m)
                if not g:
                    continue
                rows.append([arm, str(key[1]), m, num(g["raw_gap"]), num(g["null_gap"]), bracket(g, signed=True),
                             num(g.get("p_value")), num((neutral.get(m) or {}).get("raw_gap"))])
    return _table(["arm", "seed", "measure", "raw gap", "null gap", "excess [null band]", "p", "raw gap, neutral word"],
                  rows)


ANALYSES = {"kl": "KL on every seed", "lens": "Logit Lens", "weights": "weight spectrum"}


def cost(run: Run) -> str:
    """Wall time of the run: each stage, or for a run grown by run until decided each look (the
    seeds it trained and evaluated) and the analyses."""
    import json

    plan = run.path / "sequential.json"
    if plan.is_file():
        looks = json.loads(plan.read_text())["looks"]
        rows = [[f"look {lk['look']}: " + ", ".join(f"{a} to {n}" for a, n in sorted(lk["arms"].items()))
                 + f", full to {lk['full']} seeds", f"{lk['wall_s'] / 60:.1f}"] for lk in looks]
        timing = run.path / "analysis" / "timings.json"
        seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else {}
        analyses = sum(seconds.values())
        if seconds:
            names = ", ".join(ANALYSES.get(k, k) for k in seconds)
            rows.append([f"analyses ({names})", f"{analyses / 60:.1f}"])
        total = sum(lk["wall_s"] for lk in looks) + analyses
        return _table(["part", "minutes"], rows + [["total", f"{total / 60:.1f}"]])
    stages = {k: v for k, v in run.timings.items() if isinstance(v, (int, float))}
    rows = [[k, f"{v / 60:.1f}"] for k, v in stages.items()]
    rows.append(["total", f"{sum(stages.values()) / 60:.1f}"])
    return _table(["stage", "minutes"], rows)


KINDS = {"decisions": decisions, "pooled": pooled, "more": more, "fit": fit, "kl": kl, "kl-trend": kl_trend, "spectrum": spectrum,
         "counterfactual": counterfactual, "gaps": gaps, "tox-trend": tox_trend, "cost": cost}


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
