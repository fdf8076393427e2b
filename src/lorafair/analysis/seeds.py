"""Token-posterior KL and shift captured pooled over training seeds, with a noise floor.

Input: the per-sequence table of every seed, as :func:`lorafair.analysis.shift.compute_pairwise_kl`
returns it (``sequences``) with a ``seed`` column added: one row per (seed, arm, seq) with the
sequence's token count and the per-sequence mean of each KL direction, where seed s's references are
base and full fine-tuning of seed s. Sequences are the same under every seed, so seeds and sequences
are crossed and every interval here is :func:`lorafair.stats.intervals.crossed_interval`'s.

- A KL direction pooled over seeds is token-weighted (the sum of the per-token KL over every token of
  every seed, over the number of tokens), the same weighting as one seed's summary.
- Shift captured pooled over seeds is ``1 − mean(KL(full‖arm)) / mean(KL(full‖base))`` over every
  (seed, sequence) cell, the per-sequence definition of one seed's value.
- The **noise floor** is the arm ``FLOOR``: for seed s, full fine-tuning of another seed (the next one
  in the study's order). Its KL(full‖·) is how far a second run of full fine-tuning lands from the
  first, so an arm's excess over the floor (paired by seed and sequence) says whether the arm is
  further from full than another seed of full is. The floor's shift captured is the most an arm can
  be expected to reach.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lorafair.stats.intervals import crossed_difference, crossed_interval

FLOOR = "full (another seed)"
DIRECTIONS = ("kl_arm_base", "kl_base_arm", "kl_full_arm", "kl_arm_full")


def _cells(seqs: pd.DataFrame, arm: str, seeds: list, value_cols: list[str]) -> np.ndarray | None:
    """[S, U, C] cells of one arm on `seeds`: per (seed, sequence) the columns asked for, over the
    sequences finite in every column of every seed; None when nothing is left."""
    part = seqs[(seqs["arm"] == arm) & seqs["seed"].isin(seeds)]
    if part.empty:
        return None
    wide = part.pivot_table(index="seq", columns="seed", values=value_cols, aggfunc="first", dropna=False)
    wide = wide.reindex(columns=pd.MultiIndex.from_product([value_cols, seeds]))
    wide = wide[np.isfinite(wide.to_numpy(np.float64)).all(axis=1)]
    if wide.empty:
        return None
    x = np.stack([wide[c].to_numpy(np.float64) for c in value_cols], axis=-1)  # [U, S, C]
    return x.transpose(1, 0, 2)


def _with_sums(seqs: pd.DataFrame) -> pd.DataFrame:
    out = seqs.copy()
    for col in DIRECTIONS:
        if col in out.columns:
            out[col + "_sum"] = out[col] * out["n_tokens"]
    return out


def _ratio(m: np.ndarray) -> np.ndarray:
    return m[..., 0] / m[..., 1]


def _shift(m: np.ndarray) -> np.ndarray:
    return 1.0 - m[..., 0] / m[..., 1]


def _direction(seqs: pd.DataFrame, arm: str, seeds: list, col: str) -> dict | None:
    x = _cells(seqs, arm, seeds, [col + "_sum", "n_tokens"])
    if x is None or x[..., 1].sum() == 0:
        return None
    rec = crossed_interval(x, _ratio)
    return rec | {"mean": rec["value"]}


def _shift_record(seqs: pd.DataFrame, arm: str, seeds: list) -> dict | None:
    a = _cells(seqs, arm, seeds, ["kl_full_arm"])
    b = _cells(seqs, "base", seeds, ["kl_full_arm"])
    if a is None or b is None or a.shape != b.shape or b.sum() == 0:
        return None
    return crossed_interval(np.concatenate([a, b], axis=-1), _shift)


def beyond_floor(seqs: pd.DataFrame, arm: str, seeds: list) -> dict | None:
    """KL(full‖arm) − KL(full‖another seed of full), token-weighted, paired by seed and sequence,
    with its crossed interval and a word: "further than another seed of full" (the 95% interval is
    above 0), "closer than another seed of full" (below 0) or "not distinguishable from another seed
    of full" (it covers 0)."""
    cols = ["kl_full_arm_sum", "n_tokens"]
    a, f = _cells(seqs, arm, seeds, cols), _cells(seqs, FLOOR, seeds, cols)
    if a is None or f is None or a.shape != f.shape:
        return None
    rec = crossed_difference(a, f, _ratio)
    word = ("further than another seed of full" if rec["lo"] > 0 else
            "closer than another seed of full" if rec["hi"] < 0 else "not distinguishable from another seed of full")
    return rec | {"word": word}


def rank_difference(seqs: pd.DataFrame, arm_a: str, arm_b: str) -> dict | None:
    """KL(full‖a) − KL(full‖b), token-weighted, paired by seed and sequence on the seeds both arms
    have, with its crossed interval (positive: a is further from full than b)."""
    seqs = _with_sums(seqs)
    seeds = sorted(set(seqs.loc[seqs["arm"] == arm_a, "seed"]) & set(seqs.loc[seqs["arm"] == arm_b, "seed"]))
    cols = ["kl_full_arm_sum", "n_tokens"]
    a, b = _cells(seqs, arm_a, seeds, cols), _cells(seqs, arm_b, seeds, cols)
    if not seeds or a is None or b is None or a.shape != b.shape:
        return None
    return crossed_difference(a, b, _ratio)


def pool_kl(seqs: pd.DataFrame, arms: list[str]) -> dict:
    """Every arm of `arms` pooled over the seeds it has (base over every seed), and the noise floor.

    Returns ``{"arms": {arm: {<direction>: record with "mean", "shift_captured": record,
    "beyond_floor": record with "word", "floor" and "floor_shift_captured" (the floor on the arm's seeds),
    "seeds": [...]}}, "noise_floor": {"kl_full_arm": record,
    "shift_captured": record, "seeds": [...]} or None, "n_seeds", "n_sequences"}``; records are crossed
    intervals (95%, with the 90% bounds)."""
    seqs = _with_sums(seqs)
    all_seeds = sorted(seqs["seed"].unique().tolist())
    out: dict = {"arms": {}, "noise_floor": None, "n_seeds": len(all_seeds),
                 "n_sequences": int(seqs["seq"].nunique())}
    floor_seeds = sorted(seqs.loc[seqs["arm"] == FLOOR, "seed"].unique().tolist())
    if floor_seeds:
        out["noise_floor"] = {"seeds": floor_seeds,
                              "kl_full_arm": _direction(seqs, FLOOR, floor_seeds, "kl_full_arm"),
                              "shift_captured": _shift_record(seqs, FLOOR, floor_seeds)}
    for arm in arms:
        seeds = sorted(seqs.loc[seqs["arm"] == arm, "seed"].unique().tolist())
        if not seeds:
            continue
        entry: dict = {"seeds": seeds}
        for col in DIRECTIONS:
            if col in seqs.columns:
                entry[col] = _direction(seqs, arm, seeds, col)
        judged = arm not in ("base", "full")
        entry["shift_captured"] = _shift_record(seqs, arm, seeds) if judged else None
        bf = beyond_floor(seqs, arm, seeds) if judged else None
        if bf is not None:  # the floor on the arm's own seeds, so a reader sees both sides of the difference
            bf["floor"] = (_direction(seqs, FLOOR, seeds, "kl_full_arm") or {}).get("value")
            bf["floor_shift_captured"] = (_shift_record(seqs, FLOOR, seeds) or {}).get("value")
        entry["beyond_floor"] = bf
        out["arms"][arm] = entry
    return out
