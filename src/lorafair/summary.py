"""The table printed at the end of a run: arms by headline metrics, each with its 95% interval."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from lorafair.store import RunDir, read_json


def arm_order(name: str) -> tuple:
    if name == "base":
        return (0, 0, name)
    if name == "full":
        return (2, 0, name)
    rank = int(name.rsplit("-r", 1)[1]) if "-r" in name else 0
    return (1, rank, name)


def fmt(rec: dict | None) -> str:
    if not rec or rec.get("value") is None:
        return "-"
    v, lo, hi = rec["value"], rec.get("lo"), rec.get("hi")
    if lo is None or hi is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def summary_rows(run_dir: Path) -> tuple[list[str], list[dict]]:
    """One row per (task, arm, seed): arm, seed, lr, best val loss and every headline metric."""
    rd = RunDir(run_dir)
    tasks = sorted({p.stem for p in Path(run_dir).glob("*/seed-*/eval/*.json")})
    rows, metrics = [], []
    for task in tasks:
        for (arm, seed), s in sorted(rd.evals(task).items(), key=lambda kv: (arm_order(kv[0][0]), kv[0][1])):
            done = rd.done(arm, seed) or {}
            row = {"task": task, "arm": arm, "seed": seed, "lr": done.get("lr"), "best_val_loss": done.get("best_val_loss")}
            for name, rec in s.get("metrics", {}).items():
                if isinstance(rec, dict) and "value" in rec:
                    row[name] = rec
                    if name not in metrics:
                        metrics.append(name)
            rows.append(row)
    return metrics, rows


def print_summary(run_dir: Path, console: Console) -> None:
    metrics, rows = summary_rows(run_dir)
    if not rows:
        console.print(f"{run_dir}: no evaluated arms yet")
        return
    table = Table(title=f"{Path(run_dir).name}: metrics with 95% bootstrap intervals")
    for col in ["task", "arm", "seed", "lr", "best val loss"] + metrics:
        table.add_column(col, overflow="fold")
    for r in rows:
        lr = f"{r['lr']:.2g}" if r.get("lr") else "-"
        vl = f"{r['best_val_loss']:.3f}" if r.get("best_val_loss") is not None else "-"
        table.add_row(r["task"], r["arm"], str(r["seed"]), lr, vl, *[fmt(r.get(m)) for m in metrics])
    console.print(table)
    cmp = Path(run_dir) / "compare.json"
    if cmp.is_file():
        diffs = read_json(cmp).get("vs_full", {})
        if diffs:
            t2 = Table(title="arm minus full fine-tuning (paired bootstrap over the same prompts)")
            names = list(next(iter(diffs.values())).keys())
            for col in ["arm@seed"] + names:
                t2.add_column(col, overflow="fold")
            for k in sorted(diffs, key=lambda k: arm_order(k.split("@")[0])):
                t2.add_row(k, *[fmt(diffs[k].get(n)) for n in names])
            console.print(t2)
