"""Assemble the report: tables, provenance, figures embedded as base64 data URIs, and the same
content as Markdown. The HTML is one self-contained file that opens from disk with no server.
"""

from __future__ import annotations

import base64
import html
import os
import platform
from importlib import metadata

from lorafair.arms.names import arm_order
from lorafair.report.load import Run, finite, seeds
from lorafair.report.fmt import bracket

PACKAGES = ("lorafair", "torch", "transformers", "peft", "numpy", "pandas", "matplotlib")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}li{margin:.3em 0}.warn{color:#8a4b00}
details{margin:.3em 0}summary{cursor:pointer;font-weight:600}
"""


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def coloured_table(header: list[str], rows: list[list[object]], colours: list[list[str | None]]) -> str:
    """A table whose cells have the background colours ``colours`` (parallel to ``rows``; None: none)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join((f'<td style="background:{c}">' if c else "<td>") + f"{esc(v)}</td>"
                                    for v, c in zip(r, cs)) + "</tr>" for r, cs in zip(rows, colours))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def details(summary: str, inner_html: str) -> str:
    """A collapsible block (closed until clicked)."""
    return f"<details><summary>{esc(summary)}</summary>{inner_html}</details>"


def md_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(c: object) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def figure(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{esc(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(title)}</figcaption></figure>")


def bullets(items: list[str], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return "<ul>" + "".join(f"<li{attr}>{esc(i)}</li>" for i in items) + "</ul>"


def metric_rows(pooled: dict[str, dict[str, dict]], metrics: list[str],
                prefix: list[object] | None = None) -> list[list[object]]:
    """One row per arm: value [lo, hi] for each metric (seeds pooled)."""
    rows = []
    for arm in sorted(pooled, key=arm_order):
        n = max([r.get("n_seeds", 1) for r in pooled[arm].values() if isinstance(r.get("n_seeds", 1), int)] or [1])
        rows.append([*(prefix or []), arm, n, *[bracket(pooled[arm].get(m)) for m in metrics]])
    return rows


def training_rows(run: Run) -> list[list[object]]:
    """Per arm and seed: learning rate, how it was chosen, best and final validation loss, steps, time."""
    rows = []
    for (arm, seed), d in sorted(run.done.items(), key=lambda kv: (arm_order(kv[0][0]), kv[0][1])):
        search = d.get("lr_search") or run.lr_search.get(arm) or {}
        if "candidates" in search:
            cands = ", ".join(f"{c.get('lr'):g}→{c['val_loss']:.4g}" if finite(c.get("val_loss"))
                              else f"{c.get('lr'):g}→diverged" for c in search["candidates"])
            how = f"search: {cands}" + _bracketing(search)
        elif "fixed" in search:
            how = "fixed" + (f" ({search['reason']})" if search.get("reason") else "")
        else:
            how = "-"
        rows.append([arm, seed, f"{d['lr']:g}" if finite(d.get("lr")) else "-", how,
                     _n(d.get("best_val_loss")), _n(d.get("final_val_loss")), d.get("steps", "-"),
                     _n(d.get("wall_s"), ".0f"), _n(d.get("peak_mem_mb"), ".0f")])
    for (arm, seed), f in sorted(run.failed.items()):
        rows.append([arm, seed, f"{f['lr']:g}" if finite(f.get("lr")) else "-",
                     f"diverged at step {f.get('step', '?')}", "-", "-", "-", "-", "-"])
    return rows


def _bracketing(search: dict) -> str:
    """How the search bracketed its optimum: grid extensions made, and whether the best is interior."""
    if "interior" not in search:
        return ""
    ext = search.get("extensions") or []
    steps = ", ".join(f"{e['edge']} {e['lr']:g}" for e in ext)
    added = f"; grid extended {len(ext)}× ({steps})" if ext else ""
    return added + ("; optimum interior" if search["interior"] else "; optimum still at an edge of the grid")


TRAINING_HEADER = ["arm", "seed", "lr", "lr choice (lr→val loss)", "best val loss", "final val loss",
                   "steps", "wall s", "peak MB"]


def _n(x: object, spec: str = ".4f") -> str:
    return format(float(x), spec) if finite(x) else "-"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def _model_hash(run: Run) -> str | None:
    """The model's hash where the run recorded one (study model.hash, or model_hash of an arm)."""
    model = run.study.get("model") or {}
    if model.get("hash"):
        return str(model["hash"])
    for d in (*run.done.values(), *run.configs.values()):
        if d.get("model_hash"):
            return str(d["model_hash"])
    return None


def precision_text(run: Run) -> str:
    """The compute precision the arms were trained in (as each arm recorded it) and what the study
    asked for (``model.precision``); evaluation runs in the same precision as training."""
    asked = str((run.study.get("model") or {}).get("precision", "auto"))
    used = sorted({str(d["precision"]) for d in run.done.values() if isinstance(d, dict) and d.get("precision")})
    if not used:
        return f"model.precision: {asked}"
    return f"{', '.join(used)} (model.precision: {asked})"


def provenance(run: Run) -> list[tuple[str, str]]:
    """(what, value) pairs: model, scorer, data, packages, seeds, machine, stage wall times."""
    model = run.study.get("model") or {}
    out = [("study", f"{run.name} (hash {run.study_hash})" if run.study_hash else run.name),
           ("model source", str(model.get("source", "-")))]
    mh = _model_hash(run)
    if mh:
        out.append(("model hash", mh))
    out.append(("precision", precision_text(run)))
    scorers = {}
    for task, ev in run.evals.items():
        for s in ev.values():
            sc = s.get("scorer")
            if isinstance(sc, dict) and sc.get("name"):
                scorers[(task, sc.get("name"), sc.get("version"), sc.get("weights_hash"))] = 1
    for task, name, ver, wh in scorers:
        out.append((f"scorer ({task})", f"{name} version {ver or '-'}, weights hash {wh or '-'}"))
    for name, h in run.data_files:
        out.append(("fine-tuning data", f"{name} (content hash {h})" if h else name))
    out.append(("packages (at report time)", ", ".join(f"{p} {_version(p)}" for p in PACKAGES)))
    out.append(("seeds", ", ".join(str(s) for s in seeds(run)) or "-"))
    out.append(("machine (report)", f"{platform.platform()}, Python {platform.python_version()}, "
                                    f"{os.cpu_count()} CPUs"))
    earlier = set(run.timings.get("from_earlier_run") or [])
    for stage, secs in run.timings.items():
        if stage == "from_earlier_run":
            continue
        text = f"{secs:.1f} s" if finite(secs) else str(secs)
        out.append((f"wall time: {stage}", f"{text} (from an earlier run)" if stage in earlier else text))
    return out


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """A complete HTML document: sections are (heading, inner HTML)."""
    body = "".join(f"<section><h2>{esc(h)}</h2>{inner}</section>" for h, inner in sections if inner)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>\n")
