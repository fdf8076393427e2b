"""What a run prints at its end: training per arm, then per headline metric each arm's value, its
difference from full fine-tuning and the equivalence decision (readable in 80 columns)."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from lorafair.arms import kinds
from lorafair.arms.names import arm_order
from lorafair.report import sequential
from lorafair.report.fmt import bracket, num
from lorafair.stats.results import is_record
from lorafair.store.rundir import RunDir, read_json


SECOND_NOTE = ("The second scorer's measures on the same continuations; Spearman ρ of its scores with the "
               "evaluation scorer's, agreement = share of continuations both put on the same side of the "
               "threshold, Cohen's κ = that agreement corrected for chance.")


def second_scorer_table(evals: dict[tuple[str, int], dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per (arm, seed) whose evaluation has a ``second_scorer``, that scorer's
    measures (every record it has) and its agreement with the evaluation scorer on the same items."""
    found = sorted(evals.items(), key=lambda kv: (arm_order(kv[0][0]), kv[0][1]))
    found = [(k, s["second_scorer"]) for k, s in found if s.get("second_scorer")]
    names = list(dict.fromkeys(n for _, sec in found for n, r in (sec.get("metrics") or {}).items()
                               if is_record(r)))
    three = lambda x: "-" if x is None else num(x, decimals=3)  # noqa: E731
    rows = []
    for (arm, seed), sec in found:
        m, a = sec.get("metrics") or {}, sec.get("agreement") or {}
        rows.append([arm, str(seed), (sec.get("scorer") or {}).get("name", "?"), *[bracket(m.get(n)) for n in names],
                     three(a.get("spearman")), three(a.get("agreement")), three(a.get("kappa"))])
    header = ["arm", "seed", "second scorer", *[n.replace("_", " ") for n in names], "Spearman ρ", "agreement",
              "Cohen's κ"]
    return header, rows


SHORT = {"toxic_fraction": "tox frac", "expected_max_toxicity": "exp max", "toxicity_probability": "tox prob",
         "mean_score": "mean"}


def second_scorer_console(evals: dict[tuple[str, int], dict]) -> tuple[str, list[str], list[list[str]]]:
    """The second-scorer table for an 80-column console: (title naming the scorer, header, rows) with
    point values only (the report has the intervals) and short column names."""
    found = sorted(evals.items(), key=lambda kv: (arm_order(kv[0][0]), kv[0][1]))
    found = [(k, s["second_scorer"]) for k, s in found if s.get("second_scorer")]
    names = list(dict.fromkeys(n for _, sec in found for n, r in (sec.get("metrics") or {}).items() if is_record(r)))
    scorers = sorted({(sec.get("scorer") or {}).get("name", "?") for _, sec in found})
    three = lambda x: "-" if x is None else num(x, decimals=3)  # noqa: E731
    rows = []
    for (arm, seed), sec in found:
        m, a = sec.get("metrics") or {}, sec.get("agreement") or {}
        rows.append([arm, str(seed), *[three((m.get(n) or {}).get("value")) for n in names],
                     three(a.get("spearman")), three(a.get("agreement")), three(a.get("kappa"))])
    header = ["arm", "seed", *[SHORT.get(n, n.replace("_", " ")) for n in names], "ρ", "agree", "κ"]
    return f"second scorer ({', '.join(scorers)}) on the same continuations", header, rows


def missing_arms(run_dir: Path) -> list[str]:
    """'arm seed s' for every arm and seed of the run's study that has no evaluation yet, and
    'arm seed s (why)' for one whose training outputs were deleted or damaged since."""
    import yaml

    from lorafair.study.config import expand_arms, study_from_dict

    rd = RunDir(run_dir)
    f = rd.study_path()
    if not f.is_file():
        return []
    raw = yaml.safe_load(f.read_text(encoding="utf-8"))
    study = study_from_dict({k: v for k, v in raw.items() if k != "source_path"}, str(f))
    evaluated = set(rd.evals(study.task.name))
    planned = {}  # run --until-decided: each arm's seeds are those its looks gave it
    if rd.sequential_path().is_file():
        plan = read_json(rd.sequential_path())
        planned = {a: plan["seeds"][:v["looks"][-1]] for a, v in plan.get("arms", {}).items() if v.get("looks")}
    want = [(a.name, s) for a in expand_arms(study)
            for s in (planned.get(a.name, study.seeds) if kinds.trains(a) else study.seeds[:1])]
    out = []
    for a, s in want:
        problem = rd.arm_problem(a, s) if rd.done(a, s) is not None and (a, s) in evaluated else None
        if (a, s) not in evaluated:
            out.append(f"{a} seed {s}")
        elif problem is not None:
            out.append(f"{a} seed {s} ({problem})")
    return out


def failed_arms(run_dir: Path) -> list[str]:
    """One line per arm and seed whose training stopped because the loss diverged."""
    return [f"{arm} seed {seed}: loss became {info.get('loss')} at step {info.get('step')} with lr {info.get('lr')}"
            for (arm, seed), info in RunDir(run_dir).failures().items()]


def print_summary(run_dir: Path, console: Console) -> None:
    """Training per arm and seed, then one table per headline metric: each arm's value (seeds
    pooled), its difference from full fine-tuning and the decision; fits 80 columns."""
    from lorafair.report.load import headline_names, load_run, pooled_metrics
    from lorafair.report.verdict import decision_label, rank_sentence

    for line in failed_arms(run_dir):
        console.print(f"diverged, not evaluated: {line}; lower its learning rate and run again", markup=False,
                      soft_wrap=True)
    run = load_run(run_dir)
    task = run.task if run.task in run.evals else next(iter(sorted(run.evals)), None)
    if task is None:
        console.print(f"{run_dir}: no evaluated arms yet")
        return
    train = Table(title=f"{run.name}: training", title_justify="left")
    for col in ("arm", "seed", "lr", "best val loss"):
        train.add_column(col)
    for (arm, seed) in sorted(run.evals[task], key=lambda k: (arm_order(k[0]), k[1])):
        done = run.done.get((arm, seed)) or {}
        lr, vl = done.get("lr"), done.get("best_val_loss")
        train.add_row(arm, str(seed), f"{lr:.2g}" if lr else "-", f"{vl:.3f}" if vl is not None else "-")
    console.print(train)
    pooled = pooled_metrics(run, task)
    decisions = run.compare.get("decisions") or {}
    margins = run.compare.get("margins") or {}
    for m in headline_names(run, task):
        hib = next((r.get("higher_is_better") for r in (a.get(m) or {} for a in pooled.values())
                    if r.get("higher_is_better") is not None), None)
        delta = next((d[m].get("margin") for d in decisions.values() if m in d), None)
        bits = [f"δ = {delta:g}" if delta else "no margin"]
        if any((d.get(m) or {}).get("primary") for d in decisions.values()):
            bits.insert(0, "primary")
        bits += [] if hib is None else ["higher is better" if hib else "lower is better"]
        t = Table(title=f"{m} ({', '.join(bits)})", title_justify="left")
        for col in ("arm", "value [95% CI]", "arm − full [95% CI]", "decision"):
            t.add_column(col)
        for arm in sorted(pooled, key=arm_order):
            d = (decisions.get(arm) or {}).get(m)
            t.add_row(arm, bracket(pooled[arm].get(m)), bracket(d, signed=True) if d else "-",
                      decision_label(d) if d else "-")
        console.print(t)
    title, header, second = second_scorer_console(run.evals[task])
    if second:
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for col in header:
            t.add_column(col, no_wrap=True)
        for r in second:
            t.add_row(*r)
        console.print(t)
        console.print(SECOND_NOTE + " Values only; the report has their intervals.", highlight=False)
    if decisions:
        from lorafair.report.verdict import fit_gate_sentences

        for line in fit_gate_sentences(run.compare.get("fit")):
            console.print(line, highlight=False)
        console.print("equivalent: 90% CI of arm − full inside ±δ; worse/better: non-zero (95% CI excludes 0; "
                      "primary metrics Holm-adjusted over arms), >δ: beyond the margin too; "
                      "worse/better, within δ: both; inconclusive: neither; uninformative (floor): too few "
                      "events (for a gap: expected in a group); no verdict: the arm did not fit. Seeds pooled, "
                      "crossed-design intervals.",
                      highlight=False)
        console.print(rank_sentence(decisions) or "", highlight=False)
        for line in sequential.ending_lines(run.compare.get("sequential") or {}, decisions,
                                            run.compare.get("unit") or "units"):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    elif margins or run.compare:
        console.print("No equivalence decisions in compare.json.", highlight=False)
