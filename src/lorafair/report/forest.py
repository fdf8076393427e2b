"""The report's first picture: a forest plot of every arm − full difference on the primary metrics,
with its 90% interval (thick) and 95% interval (thin) against the ±δ band, coloured by decision.

One panel per metric (metrics differ in scale), one row per arm. Data in, PNG bytes out.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from lorafair.arms.names import arm_order  # noqa: E402
from lorafair.report.load import finite  # noqa: E402
from lorafair.report.plots import to_png  # noqa: E402
from lorafair.stats.equivalence import FLOOR, INCONCLUSIVE, NO_FIT, WITHIN, base_word  # noqa: E402

# decision -> (line colour, cell background)
COLOURS = {"equivalent": ("#1a7f37", "#d8f3dc"), "better": ("#1f5fbf", "#dbe8fb"), "lower": ("#6b4fbb", "#e8e1f7"),
           "worse": ("#c62828", "#fbdada"), "higher": ("#6b4fbb", "#e8e1f7"),
           "within": ("#b7791f", "#fdf0d5"), INCONCLUSIVE: ("#666666", "#eeeeee"),
           FLOOR: ("#999999", "#f4f4f4"), NO_FIT: ("#000000", "#d9d9d9")}


def colour_key(decision: str | None) -> str:
    """The colour family of a decision: "worse, within δ" and "better, within δ" share one."""
    d = base_word(decision)
    return "within" if d.endswith(WITHIN) else (d if d in COLOURS else INCONCLUSIVE)


def decision_colours(decision: str | None) -> tuple[str, str]:
    return COLOURS[colour_key(decision)]


def forest(decisions: dict[str, dict[str, dict]], metrics: list[str]) -> bytes | None:
    """decisions: compare.json's; metrics: those to draw (the primary ones). None without data."""
    metrics = [m for m in metrics if any(m in recs for recs in decisions.values())]
    if not metrics:
        return None
    arms = sorted({a for a, recs in decisions.items() if any(m in recs for m in metrics)}, key=arm_order)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 1.2, 0.45 * len(arms) + 1.4),
                             sharey=True, squeeze=False)
    for ax, m in zip(axes[0], metrics):
        delta = next((recs[m].get("delta", recs[m].get("margin")) for recs in decisions.values() if m in recs), None)
        if finite(delta):
            ax.axvspan(-delta, delta, color="#1a7f37", alpha=0.10, lw=0)
            for x in (-delta, delta):
                ax.axvline(x, color="#1a7f37", lw=0.8, ls="--")
        ax.axvline(0, color="#333", lw=0.8)
        for y, arm in enumerate(arms):
            d = decisions[arm].get(m)
            if not d or not finite(d.get("value")):
                continue
            colour = decision_colours(d.get("decision"))[0]
            if finite(d.get("lo")) and finite(d.get("hi")):
                ax.plot([d["lo"], d["hi"]], [y, y], color=colour, lw=1.2, solid_capstyle="butt")
            if finite(d.get("lo90")) and finite(d.get("hi90")):
                ax.plot([d["lo90"], d["hi90"]], [y, y], color=colour, lw=4.0, solid_capstyle="butt")
            ax.plot([d["value"]], [y], "o", color="white", mec=colour, ms=5)
        ax.set_title(m.replace("_", " ") + (f"\nδ = {delta:g}" if finite(delta) else ""), fontsize=9)
        ax.set_xlabel("arm − full", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(range(len(arms)), arms)
    axes[0][0].invert_yaxis()
    shown = sorted({colour_key(decisions[a][m].get("decision")) for a in arms for m in metrics if m in decisions[a]},
                   key=list(COLOURS).index)
    names = {"within": "non-zero, within δ", NO_FIT: "no verdict: did not fit"}
    handles = [Line2D([], [], color=COLOURS[k][0], lw=4, label=names.get(k, k)) for k in shown]
    handles += [Line2D([], [], color="#1a7f37", lw=6, alpha=0.2, label="±δ")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Arm − full fine-tuning: 90% (thick) and 95% (thin) intervals", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return to_png(fig)
