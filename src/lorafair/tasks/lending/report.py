"""The lending task's own figure in the report: per-step measures per group, one line per arm and
group (the report finds it through the task's ``report_hook``)."""

from __future__ import annotations

import pandas as pd

from lorafair.arms.names import arm_order
from lorafair.report.plots import plt, to_png
from lorafair.store.rundir import RunDir
from lorafair.tasks.lending.measures import pooled_timeseries

SECTION = "Sequential decisions"
MEASURES = ("approval_rate", "tpr", "mean_bin", "profit")


def frames(run, task: str) -> dict[str, pd.DataFrame]:
    """arm -> the per-step rows of every seed, groups named as in the study (task.options.groups).

    run: a loaded `report.load.Run`; task: the name its evaluations are stored under."""
    names = ((run.study.get("task") or {}).get("options") or {}).get("groups")
    rd, by_arm = RunDir(run.path), {}
    for arm, seed in sorted(run.evals.get(task, {})):
        path = rd.eval_paths(arm, seed, task)[1]
        df = pd.read_parquet(path) if path.is_file() else None
        if df is None or not {"step", "group", "n", "approved", "pos", "tp"} <= set(df.columns):
            continue
        if isinstance(names, list) and pd.api.types.is_integer_dtype(df["group"]):
            df = df.assign(group=[names[g] if 0 <= g < len(names) else g for g in df["group"]])
        by_arm.setdefault(arm, []).append(df)
    return {a: pd.concat(v, ignore_index=True) for a, v in by_arm.items()}


def series_png(by_arm: dict[str, pd.DataFrame]) -> bytes | None:
    """One panel per measure, one line per (arm, group) over steps; seeds and environments pooled
    (`lending.pooled_timeseries`). None without rows."""
    if not by_arm:
        return None
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.0 * len(MEASURES), 3.4), squeeze=False)
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ai, arm in enumerate(sorted(by_arm, key=arm_order)):
        for gi, (g, d) in enumerate(pooled_timeseries(by_arm[arm]).groupby("group")):
            for k, m in enumerate(MEASURES):
                axes[0][k].plot(d["step"], d[m], styles[gi % len(styles)], color=colors[ai % len(colors)],
                                label=f"{arm} / {g}")
    for k, m in enumerate(MEASURES):
        axes[0][k].set_title(m.replace("_", " "))
        axes[0][k].set_xlabel("step")
        axes[0][k].grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)


def figures(run, task: str) -> tuple[str, list[tuple[str, str, bytes]]]:
    """(report section, [(file name, caption, PNG)]) for the report."""
    png = series_png(frames(run, task))
    return SECTION, ([(f"{task}.png", "Lending: per-step measures per group and arm", png)] if png else [])
