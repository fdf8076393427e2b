"""The plan of ``run --until-decided`` as the report and the console show it: one row per look (the
seeds each arm reached, the levels, what it decided) and one line per arm saying how it ended.
Reads only compare.json's ``sequential`` section."""

from __future__ import annotations

LOOK_HEADER = ["look", "seeds per arm", "full", "decided at this look", "wall time"]
NOTE = ("Seeds were added where a primary decision was open and decided again at each look with "
        "repeated confidence intervals (O'Brien–Fleming-type α spending over the information fraction "
        "seeds / max_seeds), so the chance of a wrong \"equivalent\" (true difference δ) and of a wrong "
        "\"worse\"/\"better\" (true difference 0) stays within 5% over all looks together; a decision "
        "taken at a look stays. Each look's intervals are wider than the fixed-sample ones, most at early looks. "
        "Only the primary metrics of arms that passed the fit gate are decided this way; the levels are per "
        "decision, not Holm-adjusted across arms and metrics.")


def look_rows(plan: dict) -> list[list[str]]:
    rows = []
    for look in plan.get("looks", []):
        decided = "; ".join(f"{arm}: " + ", ".join(f"{m} {w}" for m, w in ms.items())
                            for arm, ms in (look.get("decided") or {}).items()) or "-"
        wall = f"{look['wall_s']:.0f} s" if look.get("wall_s") is not None else "not finished"
        seeds = ", ".join(f"{a} {n}" for a, n in look.get("arms", {}).items()) or "-"
        rows.append([str(look["look"]), seeds, str(look.get("full", "")), decided, wall])
    return rows


def ending_lines(plan: dict, decisions: dict, unit: str = "evaluation units") -> list[str]:
    """One line per planned arm: its ending and, for decisions left open, what would settle them."""
    out = []
    for arm, a in plan.get("arms", {}).items():
        n = a["looks"][-1] if a.get("looks") else None
        if a["status"] == "decided":
            out.append(f"{arm}: every primary decision settled, after {n} seeds")
        elif a["status"] == "open":
            out.append(f"{arm}: still open after {n} seeds (run the same command to go on)")
        elif a["status"] == "not fitted":
            out.append(f"{arm}: no verdict (did not fit, see the training table) after {n} seeds; no seeds added")
        elif a["status"] == "not compared":
            out.append(f"{arm}: not compared with full fine-tuning after {n} seeds")
        for metric, d in (decisions.get(arm) or {}).items():
            s = d.get("sequential") or {}
            if s.get("ending"):
                need = d.get("more_data") or {}
                ways = [f"about {need['seeds']} seeds"] if need.get("seeds") else []
                ways += [f"about {need['units']} {unit} (now {need.get('n_units')})"] if need.get("units") else []
                more = f"; {' or '.join(ways)} would settle it if the difference stays as observed" if ways else ""
                out.append(f"{arm} {metric}: {s['ending']}{more}")
    return out


def section(compare: dict) -> tuple[str, list[str]]:
    """(HTML, Markdown lines) of the plan; empty when the run was not sequential."""
    from lorafair.report import html as H

    plan = compare.get("sequential")
    if not plan:
        return "", []
    head = (f"Cap {plan['max_seeds']} seeds, at least {plan['seeds_per_look']} more per look, at most "
            f"{plan['max_looks']} looks" + (f", budget {plan['budget_minutes']:g} min" if plan.get("budget_minutes")
                                              else "") + ".")
    rows, ends = look_rows(plan), ending_lines(plan, compare.get("decisions") or {}, compare.get("unit") or "units")
    html = f"<p>{H.esc(head)}</p>" + H.table(LOOK_HEADER, rows) + H.bullets(ends) + f"<p>{H.esc(NOTE)}</p>"
    md = ["## Run until decided", "", head, "", H.md_table(LOOK_HEADER, rows), ""] + [f"- {e}" for e in ends]
    return html, md + ["", NOTE, ""]
