"""Weight-space diagnostics of a fine-tuning update ΔW = W_tuned − W_base.

- ``delta_spectrum``: singular values, the share of ‖ΔW‖²_F in the top r directions for each r of
  the grid (the best a rank-r update could capture), effective rank.
- ``subspace_overlap`` / ``lora_vs_full``: how much of full fine-tuning's top-r subspace a LoRA
  update spans, and its relative size.
- ``intruder_dimensions``: top singular vectors of the tuned matrix that are nearly orthogonal to
  every singular vector of the base matrix (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning:
  An Illusion of Equivalence", arXiv 2410.21228).
- ``peft_deltas``: the effective ΔW of every LoRA-adapted layer (merged weight − base weight), from
  PEFT's own merge code, so DoRA's magnitude vector is included.

SVDs run in float32 (float64 for the small r × r products); inputs of any dtype are upcast.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn


def _svd(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD in float32: U [m, k], S [k], Vh [k, n] with k = min(m, n)."""
    return torch.linalg.svd(m.detach().to(torch.float32), full_matrices=False)


def delta_spectrum(delta: Tensor, ranks: list[int]) -> dict:
    """Spectrum of an update.

    delta: [m, n]. Returns ``singular_values`` (list, descending), ``energy_at_rank`` {r: Σ_{i≤r} s_i²
    / Σ s_i²} for each r of ``ranks`` (r beyond min(m, n) gives 1.0), ``effective_rank`` =
    exp(−Σ p_i log p_i) with p_i = s_i / Σ s_j (Roy & Vetterli 2007), and ``sq_norm`` = ‖ΔW‖²_F.
    A zero update has energy 0 at every rank and effective rank 0.
    """
    s = torch.linalg.svdvals(delta.detach().to(torch.float32)).to(torch.float64)
    sq = s.square()
    total = float(sq.sum())
    cum = torch.cumsum(sq, 0)
    energy = {}
    for r in ranks:
        if r < 1:
            raise ValueError(f"rank must be >= 1, got {r}")
        energy[int(r)] = float(cum[min(r, s.numel()) - 1] / total) if total > 0 else 0.0
    if s.sum() > 0:
        p = s / s.sum()
        p = p[p > 0]
        eff = math.exp(float(-(p * p.log()).sum()))
    else:
        eff = 0.0
    return {
        "singular_values": s.tolist(),
        "energy_at_rank": energy,
        "effective_rank": eff,
        "sq_norm": total,
    }


def subspace_overlap(U_a: Tensor, U_b: Tensor) -> float:
    """Mean squared cosine of the principal angles between span(U_a) and span(U_b).

    U_a: [m, r_a], U_b: [m, r_b] (columns are re-orthonormalised). Equals ‖Q_aᵀ Q_b‖²_F / min(r_a, r_b):
    1 for the same subspace, about max(r_a, r_b) / m for random ones.
    """
    if U_a.shape[0] != U_b.shape[0]:
        raise ValueError(f"bases live in different spaces: {U_a.shape[0]} vs {U_b.shape[0]} rows")
    qa, _ = torch.linalg.qr(U_a.detach().to(torch.float64))
    qb, _ = torch.linalg.qr(U_b.detach().to(torch.float64))
    r = min(qa.shape[1], qb.shape[1])
    return float((qa.T @ qb).square().sum() / r)


def lora_vs_full(delta_lora: Tensor, delta_full: Tensor, r: int,
                 full_svd: tuple[Tensor, Tensor, Tensor] | None = None) -> dict:
    """Compare a LoRA update of rank r with the full fine-tuning update of the same matrix.

    delta_lora, delta_full: [m, n]. Returns ``rel_norm`` = ‖ΔW_lora‖_F / ‖ΔW_full‖_F and the overlaps
    of the top-r left (``col_overlap``, column space) and right (``row_overlap``, row space)
    singular subspaces of the two updates. ``full_svd``: ``svd(delta_full)`` when the caller already
    has it (one matrix compared with several LoRA arms).
    """
    if delta_lora.shape != delta_full.shape:
        raise ValueError(f"shapes differ: {tuple(delta_lora.shape)} vs {tuple(delta_full.shape)}")
    ul, _, vl = _svd(delta_lora)
    uf, _, vf = full_svd if full_svd is not None else _svd(delta_full)
    k = min(r, ul.shape[1])
    full_norm = float(torch.linalg.matrix_norm(delta_full.detach().float()))
    lora_norm = float(torch.linalg.matrix_norm(delta_lora.detach().float()))
    return {
        "rel_norm": lora_norm / full_norm if full_norm > 0 else float("nan"),
        "col_overlap": subspace_overlap(ul[:, :k], uf[:, :k]),
        "row_overlap": subspace_overlap(vl[:k].T, vf[:k].T),
    }


def intruder_dimensions(W_base: Tensor, W_tuned: Tensor, k: int = 10, threshold: float = 0.5,
                        u_base: Tensor | None = None) -> int:
    """Count intruder dimensions among the top-k left singular vectors of W_tuned.

    W_base, W_tuned: [m, n]. A tuned singular vector is an intruder when its largest |cosine| with
    any left singular vector of W_base is below ``threshold`` (Shuttleworth et al. 2024).
    ``u_base``: the left singular vectors of W_base when the caller already has them.
    """
    if W_base.shape != W_tuned.shape:
        raise ValueError(f"shapes differ: {tuple(W_base.shape)} vs {tuple(W_tuned.shape)}")
    if u_base is None:
        u_base, _, _ = _svd(W_base)
    u_tuned, _, _ = _svd(W_tuned)
    k = min(k, u_tuned.shape[1])
    sims = (u_tuned[:, :k].T.to(torch.float64) @ u_base.to(torch.float64)).abs()  # [k, min(m, n)]
    return int((sims.max(dim=1).values < threshold).sum())


def peft_deltas(peft_model: nn.Module, adapter_name: str | None = None) -> dict[str, Tensor]:
    """Effective ΔW = W_merged − W_base of every LoRA-adapted layer, keyed by module name without
    PEFT's wrapper prefix; [out, in] for Linear (the base weight's layout).

    Plain LoRA: ``get_delta_weight(adapter)`` = B·A·scaling, which is exactly what merging adds.
    Variants that change the merge (DoRA: W' = m ⊙ (W + B·A·s) / ‖W + B·A·s‖ per output row) get
    W' from PEFT's own ``merge_safe`` on a copy, minus W, so the magnitude vector is included.
    The layers must be unmerged. ``adapter_name`` defaults to the model's active adapter.
    """
    from peft.tuners.lora import LoraLayer

    name = adapter_name or getattr(peft_model, "active_adapter", "default")
    if isinstance(name, (list, tuple)):
        name = name[0]
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for mod_name, mod in peft_model.named_modules():
            if not (isinstance(mod, LoraLayer) and name in getattr(mod, "lora_A", {})):
                continue
            if mod.merged:
                raise ValueError(f"{mod_name}: adapters are merged; unmerge before taking ΔW")
            key = re.sub(r"^(base_model\.model\.)", "", mod_name)
            variant = getattr(mod, "lora_variant", {}).get(name)
            if variant is None:
                out[key] = mod.get_delta_weight(name).detach().float().cpu()
                continue
            base = mod.get_base_layer().weight.detach()
            merged = variant.merge_safe(mod, name, base.clone())
            mod._caches.pop(f"{name}-weight_norm", None)  # merge_safe caches the norm for an unmerge
            out[key] = (merged.float() - base.float()).cpu()
    return out


def rank_for_energy(
    energies: list[dict[int, float]], sq_norms: list[float] | None = None, threshold: float = 0.9
) -> int | None:
    """Smallest rank of the grid at which the aggregated energy share reaches ``threshold``.

    energies: one ``energy_at_rank`` dict per matrix. Aggregation weights each matrix by its
    ‖ΔW‖²_F (``sq_norms``): Σ_j e_j(r)·‖ΔW_j‖² / Σ_j ‖ΔW_j‖², i.e. the share of the whole update's
    energy that rank r per matrix keeps. Without ``sq_norms``, matrices weigh equally.
    Returns None when no rank of the grid reaches the threshold.
    """
    if not energies:
        return None
    w = np.ones(len(energies)) if sq_norms is None else np.asarray(sq_norms, dtype=np.float64)
    if w.shape[0] != len(energies) or w.sum() <= 0:
        raise ValueError("sq_norms must give one positive-sum weight per matrix")
    grid = sorted(set.intersection(*(set(e) for e in energies)))
    for r in grid:
        agg = float(np.dot([e[r] for e in energies], w) / w.sum())
        if agg >= threshold:
            return int(r)
    return None


def rank_for_shift(shift_by_rank: dict[int, float], threshold: float = 0.9) -> int | None:
    """Smallest LoRA rank whose shift captured reaches ``threshold`` (None if none does)."""
    for r in sorted(shift_by_rank):
        v = shift_by_rank[r]
        if v is not None and np.isfinite(v) and v >= threshold:
            return int(r)
    return None


_DEPTH = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
_ATTN = re.compile(r"attn|attention", re.I)
_MLP = re.compile(r"mlp|feed_forward|ffn", re.I)


def module_info(name: str) -> dict:
    """Parse a module name: ``type`` (last component, e.g. q_proj), ``block`` (attn / mlp / other)
    and ``depth`` (layer index, -1 when there is none)."""
    m = _DEPTH.search(name)
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    block = "attn" if _ATTN.search(parent) else "mlp" if _MLP.search(parent) else "other"
    return {"type": name.split(".")[-1], "block": block, "depth": int(m.group(1)) if m else -1}


def aggregate(rows: pd.DataFrame, module_col: str = "module") -> dict[str, pd.DataFrame]:
    """Means of the numeric columns by matrix type, by block (attn/mlp) and by depth.

    rows: one row per matrix with a module name column. Returns ``{"by_type", "by_block",
    "by_depth"}``, each a DataFrame with the group key, ``n`` (matrices) and the column means.
    """
    if module_col not in rows.columns:
        raise ValueError(f"rows have no {module_col!r} column")
    info = pd.DataFrame([module_info(n) for n in rows[module_col]], index=rows.index)
    numeric = rows.select_dtypes("number").drop(columns=[c for c in info.columns if c in rows.columns])
    data = pd.concat([info, numeric], axis=1)
    out = {}
    for key in ("type", "block", "depth"):
        g = data.groupby(key)
        df = g[list(numeric.columns)].mean()
        df.insert(0, "n", g.size())
        out[f"by_{key}"] = df.reset_index()
    return out


# ----------------------------------------------------------------------------- the whole analysis


def _full_rows(base_w: dict[str, Tensor], full_w: dict[str, Tensor], grid: list[int]) -> tuple[list[dict], dict]:
    """Per matrix, full fine-tuning's update: its spectrum, effective rank and intruders. Also returns
    per matrix (ΔW_full, its spectrum, its SVD, W_base's left singular vectors) for the LoRA rows."""
    rows, spectra = [], {}
    for name, wb in base_w.items():
        if name not in full_w:
            continue
        d = full_w[name] - wb
        sp = delta_spectrum(d, grid)
        u_base = torch.linalg.svd(wb, full_matrices=False)[0]
        spectra[name] = (d, sp, torch.linalg.svd(d, full_matrices=False), u_base)
        rows.append({"arm": "full", "module": name, "sq_norm": sp["sq_norm"], "effective_rank": sp["effective_rank"],
                     "intruders": intruder_dimensions(wb, full_w[name], u_base=u_base),
                     **{f"energy_r{r}": e for r, e in sp["energy_at_rank"].items()}})
    return rows, spectra


def _lora_rows(lora: dict[str, tuple[int, dict[str, Tensor]]], base_w: dict[str, Tensor], spectra: dict) -> list[dict]:
    """Per LoRA arm and matrix: its update's norm, overlap with full's top-r subspace, intruders."""
    rows = []
    for arm, (rank, deltas) in lora.items():
        for name, dl in deltas.items():
            if name not in spectra:
                continue
            d_full, _, full_svd, u_base = spectra[name]
            cmp = lora_vs_full(dl, d_full, rank, full_svd=full_svd)
            rows.append({"arm": arm, "module": name, "rank": rank, "sq_norm": float(dl.square().sum()),
                         "intruders": intruder_dimensions(base_w[name], base_w[name] + dl, u_base=u_base), **cmp})
    return rows


def _arm_summaries(df: pd.DataFrame, lora: dict, total_sq: float) -> dict:
    """Per LoRA arm: relative norm, mean overlaps and intruders; by module type and depth too."""
    out: dict = {"arms": {}, "by_type": {}, "by_depth": {}}
    for arm, (rank, _) in lora.items():
        r = df[df["arm"] == arm]
        if r.empty:
            continue
        out["arms"][arm] = {"rank": rank, "rel_norm": float(np.sqrt(r["sq_norm"].sum() / max(total_sq, 1e-30))),
                            "rel_norm_mean": float(r["rel_norm"].mean()), "col_overlap": float(r["col_overlap"].mean()),
                            "row_overlap": float(r["row_overlap"].mean()), "intruders_total": int(r["intruders"].sum())}
        agg = aggregate(r[["module", "rel_norm", "col_overlap", "row_overlap", "intruders"]])
        out["by_type"][arm] = agg["by_type"].to_dict("records")
        out["by_depth"][arm] = agg["by_depth"].to_dict("records")
    return out


def update_analysis(base_w: dict[str, Tensor], full_w: dict[str, Tensor],
                    lora: dict[str, tuple[int, dict[str, Tensor]]], grid: list[int],
                    shift: dict[int, float], threshold: float) -> tuple[pd.DataFrame, dict]:
    """The weight-space analysis of a study: full fine-tuning's update spectrum and each LoRA arm's
    update against it, with the rank each view recommends.

    base_w / full_w: module -> weight [out, in] (float32) of the base and the fully fine-tuned model;
    lora: arm -> (rank, module -> ΔW [out, in]); grid: ranks at which the spectrum's energy is read;
    shift: plain-LoRA rank -> measured shift captured (held-out KL); threshold: the share both
    recommendations must reach. Returns (one row per arm and matrix, the summary).
    """
    full_rows, spectra = _full_rows(base_w, full_w, grid)
    df = pd.DataFrame(full_rows + _lora_rows(lora, base_w, spectra))
    full = df[df["arm"] == "full"]
    energies = [spectra[n][1]["energy_at_rank"] for n in full["module"]]
    sq = full["sq_norm"].tolist()
    w = np.asarray(sq) / max(sum(sq), 1e-30)
    energy = {r: float(np.dot([e[r] for e in energies], w)) for r in grid}
    summary = {"full_spectrum": {"energy_at_rank": energy, "effective_rank_mean": float(full["effective_rank"].mean()),
                                 "intruders_total": int(full["intruders"].sum()), "n_matrices": len(full),
                                 "weighting": "energy shares weighted by each matrix's squared Frobenius norm"},
               **_arm_summaries(df, lora, sum(sq))}
    agg_full = aggregate(full[["module", "sq_norm", "effective_rank", "intruders"]])
    summary["by_type"]["full"] = agg_full["by_type"].to_dict("records")
    summary["by_depth"]["full"] = agg_full["by_depth"].to_dict("records")
    spec_rank, meas_rank = rank_for_energy(energies, sq, threshold), rank_for_shift(shift, threshold)
    summary["recommendation"] = {
        "threshold": threshold, "rank_from_spectrum": spec_rank, "rank_measured": meas_rank, "ranks_tried": sorted(shift),
        "agree": (spec_rank == meas_rank) if spec_rank is not None and meas_rank is not None else None,
        "note": "rank_from_spectrum: smallest rank of the grid whose best rank-r approximation keeps the threshold "
                "share of full fine-tuning's update energy; rank_measured: smallest LoRA rank whose shift captured "
                "(held-out KL) reaches the threshold; None where no rank of the grid does",
    }
    return df, summary
