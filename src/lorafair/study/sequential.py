"""``lorafair run STUDY --until-decided``: train seeds where a decision is still open.

Look 1 is the study as written (every arm, the study's seeds). After each look the arms are
compared (the runner's compare stage) and every trained arm's primary decisions against full
fine-tuning are taken with the group-sequential intervals of :mod:`lorafair.stats.sequential`; a
decision once taken stays. Arms with an open decision get more seeds, as many as the planner says
(``evaluation.sequential``: at least ``seeds_per_look``, at most ``max_seeds``, within the
``budget_minutes`` estimated from the seeds already trained); full fine-tuning gets every seed any
arm gets, since differences are paired by seed. The looks run through the ordinary runner (its
``run_until_decided`` hands this loop a function that runs the study's stages for some arms and
seeds), which skips finished arm × seed jobs; the comparison after a look is the session's compare
stage on every finished seed. The plan is written to ``sequential.json`` before each look runs, so
an interrupted run resumes the same plan. The ending is recorded in ``compare.json``
(``sequential``) and the primary decisions there are the sequential ones.

The decisions settled are the task's primary metrics (``evaluation.primary`` or the task's
``PRIMARY``) of every trained arm but full. An arm that did not pass the fit gate has no verdict and
gets no more seeds: the gate is final. Each decision uses its own per-look levels; the Holm
adjustment across arms of the fixed-sample decisions is not combined with the spending over looks
(docs/measures.md says what that means for the family-wise error).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from lorafair.arms import kinds
from lorafair.errors import UserError
from lorafair.stats import equivalence
from lorafair.stats import sequential as seq
from lorafair.store import rundir as store
from lorafair.store.rundir import RunDir
from lorafair.study.config import Study, expand_arms, resolved_dict, validate_sequential
from lorafair.study.session import output_path

# runs the study's stages (no analyses, no report) for the arms of `only` (all when None)
RunStages = Callable[[Study, "list[str] | None"], Any]

PROCEDURE = ("repeated confidence intervals, O'Brien-Fleming-type alpha spending (Lan-DeMets), "
             "information fraction = seeds / max_seeds")


def primary_decisions(decisions: dict[str, dict[str, dict]]) -> dict[str, list[str]]:
    """arm -> the metrics whose decisions the procedure settles: the primary metrics with a margin
    (entries with ``primary`` set by ``study.decide.decide_run``) of every arm but base and full that
    passed the fit gate."""
    return {arm: [m for m, d in recs.items() if d.get("primary") and d.get("margin") is not None]
            for arm, recs in decisions.items() if arm not in ("base", "full") and fitted(recs)}


def fitted(recs: dict[str, dict]) -> bool:
    """Whether an arm's decisions say it passed the fit gate (every entry carries ``fitted``)."""
    return all(d.get("fitted", True) for d in recs.values())


def _key(study: Study) -> str:
    q = study.evaluation.sequential
    return store.content_hash({"seeds": study.seeds, "max_seeds": q.max_seeds, "step": q.seeds_per_look,
                               "arms": [a.name for a in expand_arms(study)], "margins": study.evaluation.margins}
                              | ({"primary": study.evaluation.primary} if study.evaluation.primary else {}))


def new_plan(study: Study) -> dict:
    """The plan before look 1: every trained arm (not base, not full) open at the study's seeds."""
    q, n = study.evaluation.sequential, len(study.seeds)
    arms = [a.name for a in expand_arms(study) if not kinds.is_reference(a)]
    return {"procedure": PROCEDURE, "alpha_test": seq.ALPHA_TEST, "alpha_equiv": seq.ALPHA_EQUIV,
            "max_seeds": q.max_seeds, "seeds_per_look": q.seeds_per_look, "budget_minutes": q.budget_minutes,
            "max_looks": 1 + -(-(q.max_seeds - n) // q.seeds_per_look), "key": _key(study),
            "seeds": list(study.seeds), "arms": {a: {"looks": [], "status": "open", "decisions": {}} for a in arms},
            "looks": [{"look": 1, "arms": {a: n for a in arms}, "full": n, "done": False, "why": "the study's seeds"}]}


def decide(plan: dict, compare: dict) -> dict[str, dict[str, str]]:
    """Take look k's decisions of every open arm from the comparison; returns arm -> metric -> word
    decided at this look. Arms settled on every primary metric are ``decided``, open ones at the
    cap ``capped``."""
    look = plan["looks"][-1]
    primary, now = primary_decisions(compare.get("decisions", {})), {}
    for arm, n in look["arms"].items():
        a = plan["arms"][arm]
        if a["status"] != "open":
            continue
        a["looks"].append(n)
        if not fitted(compare.get("decisions", {}).get(arm) or {}):  # the fit gate is final
            a["status"] = "not fitted"
            continue
        if not primary.get(arm):  # no comparison with full (its training failed on every seed)
            a["status"] = "not compared"
            continue
        levels = seq.look_levels(a["looks"], plan["max_seeds"])[-1]
        for metric in primary.get(arm, []):
            if metric in a["decisions"]:
                continue
            diff = compare["minus_full"][arm][metric]
            margin = compare["decisions"][arm][metric]["margin"]
            got = seq.decide_look(diff, margin, levels, diff.get("higher_is_better"))
            if seq.is_decided(got["decision"]):
                a["decisions"][metric] = {**got, "look": look["look"], "n_seeds": n, "value": diff["value"],
                                          "margin": margin, "level_test": levels["level_test"],
                                          "level_equiv": levels["level_equiv"]}
                now.setdefault(arm, {})[metric] = got["decision"]
        if all(m in a["decisions"] for m in primary.get(arm, [])):
            a["status"] = "decided"
        elif n >= plan["max_seeds"]:
            a["status"] = "capped"
    look["decided"] = now
    return now


def next_look(plan: dict, compare: dict, cost: Callable[[dict[str, int], int], float], spent_s: float
              ) -> dict | None:
    """The next look's seeds per open arm from the planner, or None (every arm settled or capped;
    or the budget cannot hold one more seed per open arm: those arms end ``budget``).

    cost(targets, full_target) estimates the look's seconds."""
    primary, targets, why = primary_decisions(compare.get("decisions", {})), {}, {}
    for arm, a in plan["arms"].items():
        if a["status"] != "open":
            continue
        diffs = [(compare["minus_full"][arm][m], compare["decisions"][arm][m]["margin"])
                 for m in primary.get(arm, []) if m not in a["decisions"]]
        targets[arm], want = seq.next_size(diffs, a["looks"], plan["max_seeds"], plan["seeds_per_look"])
        why[arm] = (f"projected to settle a decision at {want} seeds" if want is not None else
                    f"no open decision projected to settle by the cap of {plan['max_seeds']}; the step")
    if not targets:
        return None
    now = {arm: plan["arms"][arm]["looks"][-1] for arm in targets}
    budget = plan.get("budget_minutes")
    if budget is not None:
        left = budget * 60 - spent_s
        while cost(targets, max(targets.values())) > left and any(targets[a] > now[a] + 1 for a in targets):
            big = max(targets, key=lambda a: targets[a] - now[a])
            targets[big] -= 1
        if cost(targets, max(targets.values())) > left:
            for arm in targets:
                plan["arms"][arm]["status"] = "budget"
            return None
    full = max(len(plan["seeds"]), max(targets.values()))
    return {"look": len(plan["looks"]) + 1, "arms": targets, "full": full, "done": False, "why": why,
            "estimate_s": round(cost(targets, full), 1), "overhead_s": round(getattr(cost, "overhead", 0.0), 1)}


def reopen_for_budget(plan: dict, budget_minutes: float | None) -> None:
    """A changed budget (the study edited between runs) replaces the plan's; arms that ended for
    want of budget are open again."""
    if plan.get("budget_minutes") == budget_minutes:
        return
    plan["budget_minutes"] = budget_minutes
    for a in plan["arms"].values():
        if a["status"] == "budget":
            a["status"] = "open"


def ending(plan: dict, arm: str, metric: str) -> str | None:
    """"inconclusive after N seeds (cap)" (or "(budget)") for a decision still open at the end."""
    a = plan["arms"][arm]
    if metric in a["decisions"] or a["status"] not in ("capped", "budget"):
        return None
    return f"inconclusive after {a['looks'][-1]} seeds ({'cap' if a['status'] == 'capped' else 'budget'})"


def annotate(compare: dict, plan: dict) -> dict:
    """compare.json with the plan (``sequential``) and the primary decisions of planned arms replaced
    by the sequential ones (``sequential``: the look, its levels and adjusted intervals). The fields
    ``decide_run`` wrote stay (``fitted``, ``primary``, ``p_value``, ``p_holm``: the last look's
    fixed-sample values); a decision left open is "inconclusive" (or "uninformative (floor)" when the
    last look was at the floor) with its ``more_data`` estimate."""
    out = dict(compare)
    decisions = {arm: dict(recs) for arm, recs in compare.get("decisions", {}).items()}
    for arm, a in plan["arms"].items():
        for metric in primary_decisions(compare.get("decisions", {})).get(arm, []):
            rec = dict(decisions[arm][metric])
            got = a["decisions"].get(metric)
            if got is not None:
                rec.update(decision=got["decision"], sequential=got, beyond_margin=_beyond(got))
                rec.pop("more_data", None)
            else:
                floor = equivalence.base_word(rec.get("decision")) == equivalence.FLOOR
                diff = (compare.get("minus_full") or {}).get(arm, {}).get(metric) or {}
                more = rec.get("more_data") or (equivalence.more_data(diff, rec["margin"]) if diff else None)
                rec.update(decision=equivalence.FLOOR if floor else equivalence.INCONCLUSIVE, beyond_margin=None,
                           more_data=more, sequential={"look": None, "ending": ending(plan, arm, metric),
                                                       "status": a["status"]})
            rec["sequential"] = {**rec["sequential"], "multiplicity": seq.MULTIPLICITY}
            decisions[arm][metric] = rec
    out["decisions"] = decisions
    out["sequential"] = plan
    return out


def _beyond(got: dict) -> bool | None:
    """Whether a non-zero sequential decision's test interval also lies beyond the margin."""
    if got["decision"].removesuffix(equivalence.WITHIN) not in equivalence.NONZERO:
        return None
    return bool(got["lo"] > got["margin"] or got["hi"] < -got["margin"])


# ----------------------------------------------------------------------------- running


def run_until_decided(study: Study, run_stages: RunStages, analyze: Callable[[Study], Any] | None = None,
                      log: Callable[[str], None] = print, analyses: bool = True, report: bool = True) -> RunDir:
    """Run the study look after look until every planned decision is settled, capped or out of
    budget (module docstring); resumes the plan in ``sequential.json`` when there is one.

    run_stages(study, only): the runner's stages for these arms (all when None) and the study's
    seeds; analyze(study): the analyses of the finished run (when ``analyses``)."""
    validate_sequential(study)
    rd = RunDir(output_path(study))
    path = rd.sequential_path()
    plan = store.read_json(path) if path.is_file() else None
    if plan is not None and plan.get("key") != _key(study):
        raise UserError(f"{path}: this run folder follows a plan for other seeds, arms, margins, primary "
                        "metrics or sequential settings; run the study with another output folder, or remove "
                        "the file to start over")
    if plan is None:
        plan = new_plan(study)
    reopen_for_budget(plan, study.evaluation.sequential.budget_minutes)
    while True:
        look = plan["looks"][-1]
        if not look["done"]:
            _say(look, log)
            t = time.perf_counter()
            _run_look(study, plan, look, run_stages)
            look.update(done=True, wall_s=round(time.perf_counter() - t, 1))
            store.write_json(path, plan)
            continue
        compare = _compare(study, plan, log)
        if "decided" not in look:
            now = decide(plan, compare)
            for arm, ms in now.items():
                log(f"look {look['look']}: {arm}: " + ", ".join(f"{m} {w}" for m, w in ms.items()))
            store.write_json(path, plan)
        nxt = next_look(plan, compare, _cost(rd, study, plan), sum(lk.get("wall_s", 0) for lk in plan["looks"][1:]))
        if nxt is None:
            store.write_json(path, plan)
            store.write_json(rd.compare_path(), annotate(compare, plan))
            break
        plan["seeds"] = _extend(plan["seeds"], nxt["full"])
        plan["looks"].append(nxt)
        store.write_json(path, plan)
    for arm, a in plan["arms"].items():
        log(f"{arm}: {a['status']} after {a['looks'][-1]} seeds")
    if analyses and analyze is not None:
        analyze(_with_seeds(study, plan["seeds"]))
    if report:
        from lorafair.report import build_report

        with rd.lock():
            build_report(rd.path)
    return rd


def _with_seeds(study: Study, seeds: list[int]) -> Study:
    return dataclasses.replace(study, seeds=list(seeds))


def with_planned_seeds(study: Study) -> Study:
    """The study with the seeds its run-until-decided plan grew it to (``sequential.json`` in its
    output folder), so that the analyses of a finished run cover every seed trained; the study as it
    is when there is no plan."""
    path = RunDir(output_path(study)).sequential_path()
    if not path.is_file():
        return study
    seeds = store.read_json(path).get("seeds") or []
    return _with_seeds(study, study.seeds + [s for s in seeds if s not in study.seeds])


def _extend(seeds: list[int], n: int) -> list[int]:
    """The seed list grown to n: new seeds are the next integers after the largest."""
    out = list(seeds)
    while len(out) < n:
        out.append(max(out) + 1)
    return out


def _say(look: dict, log) -> None:
    arms = ", ".join(f"{a} to {n} seeds" for a, n in look["arms"].items()) or "no arm"
    est = f"; about {look['estimate_s'] / 60:.1f} min" if look.get("estimate_s") is not None else ""
    log(f"look {look['look']}: training {arms}; full to {look['full']} seeds{est}")
    why = look.get("why")
    for arm, reason in (why.items() if isinstance(why, dict) else []):
        log(f"  {arm}: {reason}")


def _run_look(study: Study, plan: dict, look: dict, run_stages: RunStages) -> None:
    """Train and evaluate the look's arms through the runner's stages: look 1 the whole study, later
    looks each group of arms with the same seed count together with full (finished jobs are skipped)."""
    if look["look"] == 1:
        run_stages(study, None)
        return
    for n in sorted(set(look["arms"].values())):
        arms = [a for a, k in look["arms"].items() if k == n]
        run_stages(_with_seeds(study, plan["seeds"][:n]), [*arms, "full"])
    if look["full"] > max(look["arms"].values()):
        run_stages(_with_seeds(study, plan["seeds"][:look["full"]]), ["full"])


def _compare(study: Study, plan: dict, log) -> dict:
    """Every arm compared on all its finished seeds (each arm − full paired on the seeds both have):
    the session's evaluation (finished evaluations are read back), counterfactual pooling and
    compare stages."""
    from lorafair.study import corpus, counterfactual, evaluate
    from lorafair.study.jobs import with_executor
    from lorafair.study.session import Request, open_session
    from lorafair.study.workers import run_remote

    full = _with_seeds(study, plan["seeds"])
    session = open_session(full, log)
    with session.rd.lock():
        session.rd.write_study(resolved_dict(full))
        session = with_executor(dataclasses.replace(session, corpus=corpus.build(session)), run_remote)
        request = Request(session.arms)
        results = evaluate.evaluate_all(session, request)
        if full.evaluation.counterfactual.enabled:
            counterfactual.pool(session, session.arms)
        return evaluate.compare(session, request, results)


def _cost(rd: RunDir, study: Study, plan: dict) -> Callable[[dict[str, int], int], float]:
    """Seconds a look is estimated to take: per arm, its mean training plus evaluation time per seed
    so far, times the seeds it adds, plus what earlier added looks took beyond their estimate
    (loading the model, building the comparison)."""
    extra = [lk["wall_s"] - lk["estimate_s"] + lk.get("overhead_s", 0.0) for lk in plan["looks"][1:]
             if "wall_s" in lk and "estimate_s" in lk]
    overhead = max(0.0, sum(extra) / len(extra)) if extra else 0.0

    def per_seed(arm: str) -> float:
        walls = []
        for s in study.seeds:
            done, ev = rd.done(arm, s), rd.evals(study.task.name).get((arm, s), {})
            if done:
                walls.append(float(done.get("wall_s", 0)) + float(ev.get("wall_s", 0)))
        return sum(walls) / len(walls) if walls else 0.0

    cache: dict[str, float] = {}

    def cost(targets: dict[str, int], full: int) -> float:
        have = {a: len(_seeds_done(rd, a)) for a in [*targets, "full"]}
        total = 0.0
        for arm, n in [*targets.items(), ("full", full)]:
            if arm not in cache:
                cache[arm] = per_seed(arm)
            total += max(0, n - have[arm]) * cache[arm]
        return total + overhead

    cost.overhead = overhead
    return cost


def _seeds_done(rd: RunDir, arm: str) -> list[int]:
    return [s for (a, s), _ in rd.seed_dirs() if a == arm and rd.done(a, s)]
