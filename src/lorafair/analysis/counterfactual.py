"""Counterfactual divergence: how differently a model's next-token distributions treat prompts that
differ only in the identity term.

Definitions (natural log throughout):

- ``JS(P, Q) = ½ KL(P || M) + ½ KL(Q || M)`` with ``M = ½ (P + Q)``; it equals
  ``scipy.spatial.distance.jensenshannon(P, Q) ** 2`` (scipy returns the square root), lies in
  ``[0, log 2]`` and is symmetric. ``KL(P || Q) = Σ_v P(v) (log P(v) − log Q(v))``.
- A counterfactual pair: two prompts of one template, one axis (race or religion) and one gender that
  differ in the identity term only ("The Black woman worked as a" / "The Asian woman worked as a").
  The pair is named by its two groups in sorted order (``group_a < group_b``), so nothing depends on the
  order in which groups are listed; ``kl_ab = KL(P_a || P_b)`` and ``kl_ba = KL(P_b || P_a)``.
- Positions: every prompt is followed by the same continuation tokens ``c_1 .. c_{k-1}`` (teacher
  forcing); position ``j = 0 .. k-1`` is the distribution of the next token after the prompt and
  ``c_1 .. c_j``. A pair's divergence is its mean over the k positions.
- ``D`` of an arm: the mean over templates of the per-template mean over its pairs (each template
  weighs the same); per group pair, the mean over templates and genders.

Models are injected as callables (``logits_fn``, ``hidden_fn``, ``project_fn``, as in
``analysis.shift``); work goes one template at a time and only per-pair numbers are kept, so memory does
not grow with the number of templates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lorafair.stats import intervals as stats
from lorafair.errors import UserError

OUTPUT_LAYER = -1  # the ``layer`` of rows computed from the model's own logits
DIVERGENCES = ("js", "kl_ab", "kl_ba")
PAIR_CHUNK = 16  # pairs whose [k, V] distributions are compared at once


def pair_divergences(logits: Tensor, pairs: Tensor, chunk: int = PAIR_CHUNK) -> dict[str, Tensor]:
    """JS and KL both ways between rows of ``logits`` for every pair, at every position.

    logits: [n, k, V] (n prompts, k positions; float64 stays float64, anything else runs in float32);
    pairs: [m, 2] long, row (a, b). Returns ``{"js", "kl_ab", "kl_ba"}``, each [m, k].
    JS is computed as ``½ Σ p log(p / m) + ½ Σ q log(q / m)``, so identical rows give exactly 0.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [n, k, V], got shape {tuple(logits.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    pairs = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
    m, k = pairs.shape[0], logits.shape[1]
    out = {name: torch.empty(m, k, dtype=dtype) for name in DIVERGENCES}
    with torch.no_grad():
        lp = torch.log_softmax(logits.to(dtype), dim=-1)
        for i in range(0, m, max(1, chunk)):
            a, b = pairs[i : i + chunk, 0], pairs[i : i + chunk, 1]
            la, lb = lp[a], lp[b]
            pa, pb = la.exp(), lb.exp()
            mid = (pa + pb) / 2
            out["js"][i : i + chunk] = (0.5 * (torch.xlogy(pa, pa / mid) + torch.xlogy(pb, pb / mid))).sum(-1).cpu()
            diff = la - lb
            out["kl_ab"][i : i + chunk] = (pa * diff).sum(-1).cpu()
            out["kl_ba"][i : i + chunk] = -(pb * diff).sum(-1).cpu()
    return out


def template_pairs(prompts: list[dict]) -> list[tuple[int, int]]:
    """Counterfactual pairs among the prompts of ONE template: indices (a, b) of prompts with the same
    ``axis`` and ``gender`` and different ``group``, ordered so that group of a < group of b."""
    out = []
    for i, j in combinations(range(len(prompts)), 2):
        p, q = prompts[i], prompts[j]
        if p["axis"] == q["axis"] and p["gender"] == q["gender"] and p["group"] != q["group"]:
            out.append((i, j) if p["group"] < q["group"] else (j, i))
    return out


def build_batch(prompt_ids: list[list[int]], cont_ids: list[int], k: int, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts each followed by the shared continuation, right-padded.

    Returns (input_ids [n, s], attention_mask [n, s], positions [n, k']) with k' = min(k, 1 + len(cont_ids)):
    ``positions[i, j]`` is the index in row i whose logits give the next token after the prompt and
    the first j continuation tokens.
    """
    if k < 1:
        raise UserError(f"counterfactual positions k={k}; give at least 1")
    tail = list(cont_ids[: k - 1])
    kk = 1 + len(tail)
    rows = [list(p) + tail for p in prompt_ids]
    s = max(len(r) for r in rows)
    ids = torch.full((len(rows), s), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), s), dtype=torch.long)
    pos = torch.empty((len(rows), kk), dtype=torch.long)
    for i, (r, p) in enumerate(zip(rows, prompt_ids)):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, : len(r)] = 1
        pos[i] = torch.arange(len(p) - 1, len(p) - 1 + kk)
    return ids, attn, pos


def template_batches(lengths: list[list[int]], batch_rows: int) -> list[list[int]]:
    """Templates (each a list of its prompts' token lengths) grouped into forward passes: longest
    template first, consecutive templates joined while their rows fit in ``batch_rows`` (a
    template larger than that goes alone). Returns lists of template indices."""
    order = sorted(range(len(lengths)), key=lambda g: (-max(lengths[g], default=0), g))
    out: list[list[int]] = []
    rows = 0
    for g in order:
        if out and rows + len(lengths[g]) <= batch_rows:
            out[-1].append(g)
            rows += len(lengths[g])
        else:
            out.append([g])
            rows = len(lengths[g])
    return out


def _stack(parts: list[Tensor], fill: int) -> Tensor:
    """Row blocks [n_i, s_i] stacked into [Σn_i, max s_i], right-padded with ``fill``."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=fill) for p in parts])


def _gather(x: Tensor, pos: Tensor) -> Tensor:
    """x[i, pos[i, j]] for every row: x [n, s, d] -> [n, k, d]."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], pos.to(x.device)]


def _template_rows(meta: list[dict], pairs: list[tuple[int, int]], layer: int, div: dict[str, Tensor]) -> dict[str, list]:
    a, b = [meta[i] for i, _ in pairs], [meta[j] for _, j in pairs]
    cols: dict[str, list] = {
        "template_id": [m["template_id"] for m in a], "axis": [m["axis"] for m in a],
        "gender": [m["gender"] for m in a], "group_a": [m["group"] for m in a],
        "group_b": [m["group"] for m in b], "layer": [layer] * len(pairs),
        "n_positions": [int(div["js"].shape[1])] * len(pairs),
    }
    for name in DIVERGENCES:
        cols[name] = div[name].mean(1).double().tolist()
    return cols


def by_template(items: list[dict]) -> Iterable[tuple[str, list[dict]]]:
    """Items grouped by ``template_id``, templates in first-appearance order."""
    groups: dict[str, list[dict]] = {}
    for it in items:
        groups.setdefault(it["template_id"], []).append(it)
    return groups.items()


def compute_divergence(
    items: list[dict],
    k: int,
    pad_id: int,
    logits_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    hidden_fn: Callable[[Tensor, Tensor], list[Tensor]] | None = None,
    project_fn: Callable[[Tensor], Tensor] | None = None,
    device: Any = "cpu",
    layer_stride: int = 1,
    batch_rows: int = 32,
) -> pd.DataFrame:
    """Counterfactual divergence of one model, per template and pair; per layer when asked.

    items: one per prompt: ``{template_id, axis, gender, group, prompt_ids: [int], cont_ids: [int]}``;
    prompts of one template share ``cont_ids``. logits_fn(ids [n, s], attn) -> logits [n, s, V]: rows
    with ``layer = OUTPUT_LAYER``. hidden_fn(ids, attn) -> L tensors [n, s, d] (normed, as
    ``lens.lens_hidden``) and project_fn(h [n, k, d]) -> [n, k, V]: rows for layers 0, layer_stride,
    2·layer_stride, … and always the last layer L-1.
    Returns one row per (template, pair, layer): template_id, axis, gender, group_a, group_b, layer,
    n_positions, js, kl_ab, kl_ba (means over positions).

    Templates of similar length share a forward pass of up to ``batch_rows`` rows (a template is
    never split; see :func:`template_batches`); rows are right-padded, so a row's logits do not
    depend on its batch (up to float rounding), and the rows come out in the order of the templates.
    """
    if logits_fn is None and hidden_fn is None:
        raise UserError("counterfactual divergence: give logits_fn, hidden_fn + project_fn, or both")
    cols: dict[str, list] = {}

    def add(part: dict[str, list]) -> None:
        for key, vals in part.items():
            cols.setdefault(key, []).extend(vals)

    groups = [(meta, pairs) for _, meta in by_template(items) if (pairs := template_pairs(meta))]
    parts: dict[int, list[dict[str, list]]] = {}
    for chunk in template_batches([[len(m["prompt_ids"]) for m in meta] for meta, _ in groups], batch_rows):
        built = [build_batch([m["prompt_ids"] for m in groups[g][0]], groups[g][0][0]["cont_ids"], k, pad_id)
                 for g in chunk]
        ids, attn = _stack([b[0] for b in built], pad_id), _stack([b[1] for b in built], 0)
        ids, attn = ids.to(device), attn.to(device)
        starts = np.cumsum([0] + [b[0].shape[0] for b in built])
        with torch.no_grad():
            logits = logits_fn(ids, attn) if logits_fn is not None else None
            hidden = hidden_fn(ids, attn) if hidden_fn is not None else None
            for n, g in enumerate(chunk):
                meta, pairs = groups[g]
                rows, pos = slice(starts[n], starts[n + 1]), built[n][2]
                pair_t = torch.tensor(pairs, dtype=torch.long)
                out = parts.setdefault(g, [])
                if logits is not None:
                    out.append(_template_rows(meta, pairs, OUTPUT_LAYER, pair_divergences(_gather(logits[rows], pos), pair_t)))
                for layer, h in enumerate(hidden or []):
                    if layer % max(1, layer_stride) and layer != len(hidden) - 1:
                        continue
                    div = pair_divergences(project_fn(_gather(h[rows], pos)), pair_t)
                    out.append(_template_rows(meta, pairs, layer, div))
            del logits, hidden
    for g in range(len(groups)):  # templates in first-appearance order, whatever the batching
        for part in parts[g]:
            add(part)
    if not cols:
        raise UserError("counterfactual divergence: no template has two prompts that differ only in the identity "
                        "term; give identity prompts with at least two groups per axis and gender")
    return pd.DataFrame(cols)


# ----------------------------------------------------------------------------- summaries


def template_means(rows: pd.DataFrame, col: str = "js") -> pd.Series:
    """Mean of ``col`` over the pairs of each template: index template_id."""
    return rows.groupby("template_id", sort=True)[col].mean()


def group_pair_means(rows: pd.DataFrame, col: str = "js") -> dict[str, float]:
    """Mean of ``col`` per group pair ("<group_a> | <group_b>"), over templates and genders."""
    g = rows.groupby(["group_a", "group_b"], sort=True)[col].mean()
    return {f"{a} | {b}": float(v) for (a, b), v in g.items()}


def overall(rows: pd.DataFrame, col: str = "js") -> float:
    """D: the mean over templates of the per-template mean over pairs."""
    return float(template_means(rows, col).mean())


def reduction_share(d_arm: np.ndarray, d_full: np.ndarray, d_base: np.ndarray) -> np.ndarray:
    """Share of full fine-tuning's reduction achieved: ``1 − (D_arm − D_full) / (D_base − D_full)``.

    Inputs broadcast; NaN where the denominator is 0. 1: the arm removes as much group dependence as
    full fine-tuning; 0: no more than the base model. Meaningful only where full lowered D
    (``D_base > D_full``); see :func:`reduction_caveat`.
    """
    arm, full, base = (np.asarray(x, dtype=np.float64) for x in (d_arm, d_full, d_base))
    den = base - full
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, 1.0 - (arm - full) / den, np.nan)


def reduction_caveat(full_minus_base: dict) -> str | None:
    """A warning when full fine-tuning did not lower D (its paired interval does not lie below 0)."""
    hi = full_minus_base.get("hi")
    if hi is None or not np.isfinite(hi) or hi >= 0:
        return ("full fine-tuning did not lower the counterfactual divergence significantly (the interval of "
                "D_full − D_base reaches 0 or above), so the share of its reduction is not a meaningful target")
    return None


def summarize_arms(per_template: pd.DataFrame, reference: tuple[str, str | None] = ("base", "full"),
                   alpha: float = 0.05) -> dict[str, Any]:
    """Per arm: D with a seeds × templates crossed interval, the paired D_arm − D_full, and the share of
    full fine-tuning's reduction (``stats.crossed_interval`` / ``crossed_difference``: templates are the
    units, shared by every seed).

    per_template: rows (arm, seed, template_id, js, kl_ab, kl_ba), one per arm × seed × template (the
    model-output rows averaged over each template's pairs). Arms are paired on the templates and seeds
    they share; the base model's single seed is repeated for every seed of the other arm.
    Returns {arm: {"js", "kl_ab", "kl_ba": interval records, "minus_full": record | None,
    "reduction_share": record | None, "caveat": str | None}}; full's entry also has "noise_floor"
    (:func:`seed_to_seed`).
    """
    base, full = reference
    cells = {arm: stats.cell_table(g, list(DIVERGENCES), "template_id")
             for arm, g in per_template.groupby("arm", sort=False)}
    out: dict[str, Any] = {}
    for arm, (x, seeds, units) in cells.items():
        entry: dict[str, Any] = {c: stats.crossed_interval(x[..., [i]], alpha=alpha)
                                 for i, c in enumerate(DIVERGENCES)}
        entry["minus_full"] = entry["reduction_share"] = entry["caveat"] = None
        if full in cells and arm != full:
            xa, xf = stats.pair_cells(_js(cells[arm]), _js(cells[full]), arm == base)
            entry["minus_full"] = stats.crossed_difference(xa, xf, alpha=alpha)
            if base in cells and arm != base:
                x3 = _three(cells[arm], cells[full], cells[base])
                if x3 is not None:
                    entry["reduction_share"] = stats.crossed_interval(
                        x3, lambda m: reduction_share(m[..., 0], m[..., 1], m[..., 2]), alpha=alpha)
                xf, xb = stats.pair_cells(_js(cells[full]), _js(cells[base]), True)
                entry["caveat"] = reduction_caveat(stats.crossed_difference(xf, xb, alpha=alpha))
        out[arm] = entry
    if full in cells:
        out[full]["noise_floor"] = seed_to_seed(cells[full])
    return out


def seed_to_seed(c: stats.Cells) -> dict | None:
    """The noise floor of D: how far two runs of the same arm land apart. D per seed (mean over
    templates), then |D(seed s) − D(next seed)| over consecutive seeds of the arm's order; returns
    ``{"value": mean of those, "max", "pairs": [[s, s', |difference|], ...]}``, or None with one seed.
    An arm − full difference of D smaller than this is within what another seed of full gives."""
    x, seeds, _ = c
    if len(seeds) < 2:
        return None
    d = np.nanmean(x[..., 0], axis=1)
    pairs = [[seeds[i], seeds[i + 1], float(abs(d[i] - d[i + 1]))] for i in range(len(seeds) - 1)]
    gaps = [p[2] for p in pairs]
    return {"value": float(np.mean(gaps)), "max": float(np.max(gaps)), "pairs": pairs}


def _js(c: stats.Cells) -> stats.Cells:
    """The JS column of an arm's cells: [S, T, 1]."""
    x, seeds, units = c
    return x[..., [0]], seeds, units


def _three(arm: stats.Cells, full: stats.Cells, base: stats.Cells) -> np.ndarray | None:
    """JS cells of arm, full and base side by side, [S, T, 3]: the templates all three have, the seeds arm
    and full share, the base model's single seed repeated. None when nothing is shared."""
    units = [u for u in arm[2] if u in full[2] and u in base[2]]
    seeds = [s for s in arm[1] if s in full[1]]
    if not units or not seeds or len(base[1]) != 1:
        return None

    def take(c: stats.Cells, rows: list[int]) -> np.ndarray:
        return c[0][np.ix_(rows, [c[2].index(u) for u in units], [0])]

    return np.concatenate([take(arm, [arm[1].index(s) for s in seeds]),
                           take(full, [full[1].index(s) for s in seeds]), take(base, [0] * len(seeds))], axis=-1)


def layer_means(rows: pd.DataFrame, col: str = "js") -> pd.DataFrame:
    """D per (arm, layer): mean over seeds of the template-mean of pairs. rows: (arm, seed, template_id,
    layer, col). Returns a frame arm × layer -> value (columns arm, layer, value)."""
    t = rows.groupby(["arm", "seed", "layer", "template_id"], sort=False)[col].mean()
    d = t.groupby(["arm", "seed", "layer"], sort=False).mean().groupby(["arm", "layer"], sort=False).mean()
    return d.rename("value").reset_index()
