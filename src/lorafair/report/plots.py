"""Plots of a run's results, one function per plot: data in, PNG bytes out (matplotlib, Agg).

Every function returns ``None`` when its data is empty, so callers draw a plot only when the data
exists. Records are metric records ``{value, lo, hi, ...}``; intervals are drawn as bands or bars.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lorafair.arms.names import arm_order, arm_rank  # noqa: E402
from lorafair.report.load import finite, is_record  # noqa: E402

DPI = 110
REFERENCE_STYLE = {"full": ("tab:green", "full fine-tuning"), "base": ("tab:gray", "base")}


def to_png(fig) -> bytes:
    """The figure as PNG bytes; closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _bounds(rec: dict) -> tuple[float, float]:
    lo, hi = rec.get("lo"), rec.get("hi")
    v = float(rec["value"])
    return (float(lo) if finite(lo) else v), (float(hi) if finite(hi) else v)


def _band(ax, x: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: str) -> None:
    """Interval as a shaded band; a lone point gets an error bar (a band needs two points)."""
    if len(x) > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
    else:
        ax.errorbar(x, y, yerr=np.maximum([y - lo, hi - y], 0), fmt="none", ecolor=color, capsize=3)


def _rank_axis(ax, ranks: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(ranks)))
    ax.set_xticklabels([str(r) for r in sorted(set(ranks))])
    ax.set_xlabel("LoRA rank r (log scale)")


def metric_vs_rank(metric: str, studies: dict[str, dict[str, dict]], unit: str = "") -> bytes | None:
    """One metric against rank: a line with an interval band per (study, variant); full and base
    as horizontal lines with their intervals as shaded bands.

    studies: study label -> arm -> record (one study: labels carry the variant only).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ranks: list[int] = []
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    many = len(studies) > 1  # then colour = study, marker = variant; else colour = variant
    markers = ["o", "s", "^", "D", "v"]
    for si, (study, arms) in enumerate(studies.items()):
        lines: dict[str, list[tuple[int, dict]]] = {}
        for arm, rec in arms.items():
            variant, r = arm_rank(arm)
            if r is not None and is_record(rec) and finite(rec["value"]):
                lines.setdefault(variant, []).append((r, rec))
        for vi, variant in enumerate(sorted(lines, key=lambda v: (v != "lora", v))):
            pts = sorted(lines[variant], key=lambda t: t[0])
            x = np.array([p[0] for p in pts], dtype=np.float32)
            y = np.array([p[1]["value"] for p in pts], dtype=np.float32)
            lo, hi = np.array([_bounds(p[1]) for p in pts], dtype=np.float32).T
            c = palette[(si if many else vi) % len(palette)]
            ax.plot(x, y, "-", marker=markers[vi % len(markers)], color=c,
                    label=f"{study}: {variant}" if many else variant)
            _band(ax, x, y, lo, hi, c)
            ranks += [int(v) for v in x]
        for ref, (c, name) in REFERENCE_STYLE.items():
            rec = arms.get(ref)
            if not (is_record(rec) and finite(rec["value"])):
                continue
            c = palette[si % len(palette)] if many else c
            ax.axhline(rec["value"], color=c, ls="--" if ref == "full" else ":",
                       label=f"{study}: {name}" if many else name)
            lo, hi = _bounds(rec)
            ax.axhspan(lo, hi, color=c, alpha=0.12, linewidth=0)
    if not ranks and not ax.lines:
        plt.close(fig)
        return None
    if ranks:
        _rank_axis(ax, ranks)
    ax.set_ylabel(metric.replace("_", " ") + (f" ({unit})" if unit else ""))
    ax.set_title(f"{metric.replace('_', ' ')} against rank (95% intervals)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return to_png(fig)


def group_bars(groups: dict[str, dict[str, dict[str, dict]]], measures: list[str] | None = None,
               title: str = "") -> bytes | None:
    """Per-group bars per arm with interval error bars, one panel per measure.

    groups: arm -> group -> measure -> record.
    """
    arms = sorted(groups, key=arm_order)
    names = sorted({g for a in arms for g in groups[a]}, key=str)
    if measures is None:
        measures = []
        for a in arms:
            for g in groups[a].values():
                measures += [m for m, r in g.items() if is_record(r) and m not in measures]
    if not arms or not names or not measures:
        return None
    n = len(measures)
    cols = min(2, n)
    rows = math.ceil(n / cols)
    panel_w = max(4.5, 1.5 + 0.15 * len(names) * len(arms))  # inches: room for every bar
    fig, axes = plt.subplots(rows, cols, figsize=(panel_w * cols, 3.2 * rows), squeeze=False)
    width = 0.8 / len(arms)
    x = np.arange(len(names), dtype=np.float32)
    for k, m in enumerate(measures):
        ax = axes[k // cols][k % cols]
        for i, arm in enumerate(arms):
            recs = [groups[arm].get(g, {}).get(m) for g in names]
            y = np.array([r["value"] if is_record(r) else np.nan for r in recs], dtype=np.float32)
            err = np.array([[r["value"] - _bounds(r)[0], _bounds(r)[1] - r["value"]] if is_record(r) else [0, 0]
                            for r in recs], dtype=np.float32).T
            ax.bar(x + (i - (len(arms) - 1) / 2) * width, y, width, yerr=np.maximum(err, 0), capsize=2, label=arm)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(m.replace("_", " "), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return to_png(fig)


def lens_heatmap(table: pd.DataFrame, column: str, title: str = "", log: bool = False) -> bytes | None:
    """Heatmap layer × arm of one Logit Lens column (table: arm, layer, column; one row each);
    ``log``: logarithmic colour scale over the positive values."""
    if table is None or column not in table.columns or table[column].isna().all():
        return None
    if log and not (table[column] > 0).any():
        return None
    piv = table.pivot_table(index="layer", columns="arm", values=column, aggfunc="mean")
    piv = piv[sorted(piv.columns, key=arm_order)].sort_index()
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * piv.shape[1], 1.5 + 0.28 * piv.shape[0]))
    values = piv.to_numpy(dtype=np.float32)
    norm = None
    if log:
        from matplotlib.colors import LogNorm

        pos = values[values > 0]
        norm = LogNorm(vmin=float(pos.min()), vmax=float(pos.max()))
        values = np.where(values > 0, values, np.nan)
    im = ax.imshow(values, aspect="auto", origin="lower", cmap="viridis", norm=norm)
    ax.set_xticks(range(piv.shape[1]))
    ax.set_xticklabels(piv.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(piv.shape[0]))
    ax.set_yticklabels([str(v) for v in piv.index], fontsize=7)
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label=column.replace("_", " ") + (" (log scale)" if log else ""))
    ax.set_title(title or f"Logit Lens: {column.replace('_', ' ')}")
    return to_png(fig)


def shift_vs_rank(kl: dict[str, dict]) -> bytes | None:
    """Shift captured (with interval) and mean KL to base / from full against rank, with the noise
    floor (another seed of full fine-tuning) where the KL analysis has one.

    kl: arm -> {"shift_captured": record, "kl_base_arm": {"mean": ...}, "kl_full_arm": {...}}.
    """
    lines: dict[str, list[tuple[int, dict]]] = {}
    for arm, e in kl.items():
        variant, r = arm_rank(arm)
        if r is not None and isinstance(e, dict):
            lines.setdefault(variant, []).append((r, e))
    if not lines:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    pts_all = [p for v in lines.values() for p in v]
    ranks = []
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for vi, variant in enumerate(sorted(lines, key=lambda v: (v != "lora", v))):
        pts = sorted(lines[variant], key=lambda t: t[0])
        c = palette[vi % len(palette)]
        sc = [(r, e["shift_captured"]) for r, e in pts if is_record(e.get("shift_captured"))]
        if sc:
            x = np.array([r for r, _ in sc], dtype=np.float32)
            y = np.array([s["value"] for _, s in sc], dtype=np.float32)
            lo, hi = np.array([_bounds(s) for _, s in sc], dtype=np.float32).T
            a1.plot(x, y, "o-", color=c, label=variant)
            _band(a1, x, y, lo, hi, c)
        for col, style in (("kl_base_arm", "o-"), ("kl_full_arm", "s--")):
            vals = [(r, e[col]["mean"]) for r, e in pts if isinstance(e.get(col), dict) and finite(e[col].get("mean"))]
            if vals:
                a2.plot([v[0] for v in vals], [v[1] for v in vals], style, color=c, label=f"{variant}: {col}")
        ranks += [r for r, _ in pts]
    for ax in (a1, a2):
        _rank_axis(ax, ranks)
        ax.grid(alpha=0.3)
    floor = next((e["beyond_floor"] for _, e in pts_all if isinstance(e.get("beyond_floor"), dict)), None)
    if floor and finite(floor.get("floor_shift_captured")):
        a1.axhline(floor["floor_shift_captured"], color="tab:olive", ls="-.", label="another seed of full")
    if floor and finite(floor.get("floor")):
        a2.axhline(floor["floor"], color="tab:olive", ls="-.", label="KL(full‖another seed of full)")
    a1.axhline(1.0, color="tab:green", ls="--", label="full (by definition)")
    a1.axhline(0.0, color="tab:gray", ls=":", label="base")
    a1.set_ylabel("shift captured")
    a1.set_title("1 − KL(full‖arm) / KL(full‖base)")
    a2.set_ylabel("mean token KL (nats)")
    a2.set_title("KL(base‖arm) and KL(full‖arm)")
    for ax in (a1, a2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)


def spectrum_energy(energy_at_rank: dict, shift: dict[str, dict[int, dict]] | None = None) -> bytes | None:
    """Energy of full fine-tuning's update kept by its top-r directions, against r, with the LoRA
    arms' measured shift captured on the same axis.

    energy_at_rank: {r: share} (keys may be strings); shift: variant -> rank -> record.
    """
    pts = sorted((int(r), float(v)) for r, v in (energy_at_rank or {}).items() if finite(v))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="black",
            label="full: share of ‖ΔW‖² in top-r directions")
    ranks = [p[0] for p in pts]
    for variant, by_rank in (shift or {}).items():
        sc = sorted((r, rec) for r, rec in by_rank.items() if is_record(rec))
        if sc:
            x = [r for r, _ in sc]
            lo, hi = np.array([_bounds(s) for _, s in sc], dtype=np.float32).T
            ax.errorbar(x, [s["value"] for _, s in sc],
                        yerr=np.maximum([np.array([s["value"] for _, s in sc]) - lo,
                                         hi - np.array([s["value"] for _, s in sc])], 0),
                        fmt="s--", capsize=3, label=f"{variant}: shift captured")
            ranks += x
    _rank_axis(ax, ranks)
    ax.set_ylabel("share")
    ax.set_title("What rank r could keep vs what LoRA at rank r captured")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def loss_curves(train: dict[tuple[str, int], pd.DataFrame], val: dict[tuple[str, int], pd.DataFrame]) -> bytes | None:
    """Training loss (left) and validation loss (right) of every arm and seed against step."""
    train = {k: d for k, d in train.items() if {"step", "loss"} <= set(d.columns)}
    val = {k: d for k, d in val.items() if {"step", "val_loss"} <= set(d.columns)}
    if not train and not val:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.0, 3.6))
    arms = sorted({k[0] for k in [*train, *val]}, key=arm_order)
    colors = {a: c for a, c in zip(arms, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)}
    for ax, data, col in ((a1, train, "loss"), (a2, val, "val_loss")):
        seen = set()
        for (arm, seed), d in sorted(data.items(), key=lambda kv: (arm_order(kv[0][0]), kv[0][1])):
            ax.plot(d["step"], d[col], "-" if col == "loss" else "o-", color=colors[arm], alpha=0.85,
                    label=arm if arm not in seen else None)
            seen.add(arm)
        ax.set_xlabel("step")
        ax.set_ylabel(col.replace("_", " "))
        ax.grid(alpha=0.3)
        if seen:
            ax.legend(fontsize=7)
    a1.set_title("training loss")
    a2.set_title("validation loss")
    fig.tight_layout()
    return to_png(fig)
