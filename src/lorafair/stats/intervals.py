"""Intervals for results pooled over training seeds and shared evaluation units.

Pure functions of arrays; nothing here imports training, tasks, the report or the CLI.

The design. Every arm is trained with seeds s = 1..S and evaluated on the same units u = 1..U
(prompts with their sampling streams, test profiles, environments with their random streams). Seeds
and units are *crossed*: unit u is the same unit under every seed. Per (seed, unit) cell a task keeps
a few sums ``x[s, u, :]`` (continuations, toxic continuations, max score, ...) and a statistic is a
smooth function ``f`` of their mean, e.g. toxic fraction = mean(n_toxic) / mean(k).

Interval of a value or of a paired difference (:func:`crossed_interval`, :func:`crossed_difference`):
the statistic is linearised at the mean cell (delta method, numerical gradient), giving one number
``z[s, u]`` per cell, and the two-way random-effects model ``z = seed + unit + seed×unit`` is fitted
by ANOVA mean squares MS_S, MS_U, MS_E (S−1, U−1, (S−1)(U−1) degrees of freedom). The variance of the
grand mean, σ²_seed/S + σ²_unit/U + σ²_inter/(S·U), is estimated in two parts: v_seed = MS_S/(S·U)
(the variance of the mean of the S seed means, df S−1) and v_unit = max(0, MS_U − MS_E)/(S·U) (what
the units share across seeds, df U−1). The interval is ``value ± sqrt(t²_{S−1}·v_seed +
t²_{U−1}·v_unit)``, each part at its own Student-t quantile: exact when either part dominates,
conservative when they are comparable. With one seed it is the t interval over units (ν = U − 1)
and seed-to-seed variation is not part of it. Why not resample: no bootstrap of a crossed array has
the right variance (McCullagh 2000, "Resampling and exchangeable arrays"); resampling seeds and
units independently counts the interaction three times (Owen 2007, "The pigeonhole bootstrap"), and
with three seeds a percentile interval cannot reach 95% when seeds dominate (it is at most the range
of three seed means). ``tests/test_stats.py`` checks coverage on simulated data.

Statistics that are not smooth (the max − min gap over groups) use :func:`crossed_bootstrap`: each
replicate draws S seeds and U units with replacement, the same unit draws for every seed and for
every arm of a paired comparison; its percentile interval is conservative when the seed × unit
interaction dominates.

The decisions drawn from these intervals are in :mod:`lorafair.stats.equivalence`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats as sps

from lorafair.errors import UserError

Measure = Callable[[np.ndarray], np.ndarray]  # [..., C] cell means -> [...] statistic
EQUIVALENCE_ALPHA = 0.10  # 90% interval inside (−δ, δ): two one-sided tests at 5%

_CHUNK_CELLS = 4_000_000


# ----------------------------------------------------------------------------- cells


def cell_table(frame: pd.DataFrame, cols: list[str], unit_col: str, seed_col: str = "seed"
               ) -> tuple[np.ndarray, list, list]:
    """Sum ``cols`` per (seed, unit) → ``x: [S, U, C]``, the seeds and the units (sorted).

    Only units present under every seed are kept (the crossed design needs them all)."""
    missing = [c for c in [*cols, unit_col, seed_col] if c not in frame.columns]
    if missing:
        raise UserError(f"cell table: missing column(s) {missing}; the frame has {list(frame.columns)}")
    sums = frame.groupby([seed_col, unit_col], sort=True)[cols].sum()
    wide = sums.unstack(seed_col)  # [U, C × S]
    wide = wide.dropna()
    seeds = sorted(frame[seed_col].unique().tolist())
    units = wide.index.tolist()
    x = np.stack([wide[c].to_numpy(np.float64).T for c in cols], axis=-1)  # [S, U, C]
    return x, seeds, units


Cells = tuple[np.ndarray, list, list]  # (x [S, U, ...], seeds, units), as cell_table returns


def pair_cells(a: Cells, b: Cells) -> tuple[np.ndarray, np.ndarray]:
    """Align two arms' cells for a paired difference: common units in ``a``'s order, common seeds
    paired; an arm with a single seed that the other lacks (the untrained base) is repeated for
    every seed of the other. Returns (xa, xb) of equal shape ``[S, U, ...]``."""
    (xa, seeds_a, units_a), (xb, seeds_b, units_b) = a, b
    pos_b = {u: i for i, u in enumerate(units_b)}
    keep = [i for i, u in enumerate(units_a) if u in pos_b]
    if not keep:
        raise UserError("paired difference: the two arms share no evaluation unit; "
                        "evaluate both on the same prompts, rows or environments")
    xa, xb = xa[:, keep], xb[:, [pos_b[units_a[i]] for i in keep]]
    common = [s for s in seeds_a if s in seeds_b]
    if not common and len(seeds_a) == 1:
        return np.repeat(xa, len(seeds_b), axis=0), xb
    if not common and len(seeds_b) == 1:
        return xa, np.repeat(xb, len(seeds_a), axis=0)
    if not common:
        raise UserError(f"paired difference: seeds {seeds_a} and {seeds_b} share none; "
                        "train both arms with the same seeds")
    return xa[[seeds_a.index(s) for s in common]], xb[[seeds_b.index(s) for s in common]]


# ----------------------------------------------------------------------------- variance components


def linearise(x: np.ndarray, measure: Measure) -> tuple[float, np.ndarray]:
    """Point value ``measure(mean cell)`` and per-cell influence values.

    x: [S, U, C]. Returns (value, z: [S, U]) with ``z = ∇measure(m) · (x − m)``, m the mean cell,
    the gradient by central differences. For a mean (C = 1, identity) z is x − mean."""
    m = x.reshape(-1, x.shape[-1]).mean(axis=0)
    value = float(measure(m))
    h = 1e-6 * np.maximum(np.abs(m), 1e-3)
    eye = np.diag(h)
    with np.errstate(invalid="ignore", divide="ignore"):
        grad = (measure(m + eye) - measure(m - eye)) / (2 * h)
    return value, (x - m) @ grad


def crossed_variance(z: np.ndarray) -> dict[str, np.ndarray]:
    """Variance of the grand mean of ``z: [..., S, U]`` under the crossed random-effects model.

    Two parts, each with its own degrees of freedom (arrays over the leading dims):
    ``v_seed`` = MS_S / (S·U), the variance of the mean of the S seed means (seed effects plus the
    seed × unit interaction), df S − 1; ``v_unit`` = max(0, MS_U − MS_E) / (S·U), the variance the
    units share across seeds, df U − 1. Their sum ``var`` estimates σ²_seed/S + σ²_unit/U +
    σ²_inter/(S·U). Also the components ``seed``, ``unit``, ``inter`` (σ² estimates from the mean
    squares, truncated at 0). With one seed: ``v_seed`` = 0 and ``v_unit`` = MS_U / U, the whole
    variance over units (seed-to-seed variation is then not estimable: ``seed``, ``inter`` NaN)."""
    z = np.asarray(z, np.float64)
    S, U = z.shape[-2:]
    nan = np.full(z.shape[:-2], np.nan)
    if U < 2:
        return {"var": nan, "v_seed": nan, "df_seed": S - 1, "v_unit": nan, "df_unit": U - 1,
                "seed": nan, "unit": nan, "inter": nan}
    cs = z.mean(axis=-2)  # unit means [..., U]
    ms_u = S * cs.var(axis=-1, ddof=1)
    if S == 1:
        return {"var": ms_u / U, "v_seed": np.zeros_like(ms_u), "df_seed": 0, "v_unit": ms_u / U,
                "df_unit": U - 1, "seed": nan, "unit": ms_u, "inter": nan}
    rs, gm = z.mean(axis=-1), z.mean(axis=(-2, -1))
    ms_s = U * rs.var(axis=-1, ddof=1)
    resid = z - rs[..., :, None] - cs[..., None, :] + gm[..., None, None]
    ms_e = (resid ** 2).sum(axis=(-2, -1)) / ((S - 1) * (U - 1))
    v_seed, v_unit = ms_s / (S * U), np.maximum(ms_u - ms_e, 0.0) / (S * U)
    return {"var": v_seed + v_unit, "v_seed": v_seed, "df_seed": S - 1, "v_unit": v_unit,
            "df_unit": U - 1, "seed": np.maximum(ms_s - ms_e, 0.0) / U,
            "unit": np.maximum(ms_u - ms_e, 0.0) / S, "inter": ms_e}


def half_width(comp: dict, alpha: float) -> np.ndarray:
    """Half-width of the crossed interval: sqrt(t²_{S−1}·v_seed + t²_{U−1}·v_unit), each part at the
    ``1 − alpha/2`` quantile of Student's t with its own degrees of freedom (a part with 0 df is 0)."""
    def part(v, df):
        return 0.0 if df < 1 else sps.t.ppf(1 - alpha / 2, df) ** 2 * np.maximum(v, 0.0)

    return np.sqrt(part(comp["v_seed"], comp["df_seed"]) + part(comp["v_unit"], comp["df_unit"]))


def _interval_record(value: float, comp: dict, S: int, U: int, alpha: float) -> dict:
    hw, hw90 = float(half_width(comp, alpha)), float(half_width(comp, EQUIVALENCE_ALPHA))
    var = float(comp["var"])
    comps = {k: (float(comp[k]) if np.isfinite(comp[k]) else None) for k in ("seed", "unit", "inter")}
    return {"value": value, "lo": value - hw, "hi": value + hw, "lo90": value - hw90,
            "hi90": value + hw90, "se": float(np.sqrt(max(var, 0.0))) if np.isfinite(var) else float("nan"),
            "n_seeds": int(S), "n_units": int(U), "components": comps, "interval": "crossed",
            "parts": {k: (float(comp[k]) if np.isfinite(comp[k]) else None) if k[0] == "v" else int(comp[k])
                      for k in ("v_seed", "df_seed", "v_unit", "df_unit")}}


def crossed_interval(x: np.ndarray, measure: Measure = lambda m: m[..., 0],
                     alpha: float = 0.05) -> dict:
    """Value of ``measure`` over all cells with its crossed-design interval (module docstring).

    x: [S, U, C] per-cell sums. Returns ``{value, lo, hi, lo90, hi90, se, df, n_seeds, n_units,
    components: {seed, unit, inter}, interval: "crossed"}``; lo/hi at ``1 − alpha``, lo90/hi90
    at 90% (for equivalence)."""
    x = _cells(x)
    value, z = linearise(x, measure)
    return _interval_record(value, crossed_variance(z), x.shape[0], x.shape[1], alpha)


def crossed_difference(xa: np.ndarray, xb: np.ndarray, measure: Measure = lambda m: m[..., 0],
                       alpha: float = 0.05) -> dict:
    """Paired difference ``measure(a) − measure(b)`` of two arms on the same seeds and units.

    xa, xb: [S, U, C] aligned cell by cell (see :func:`pair_cells`). The influence values of the
    two arms are subtracted cell by cell and analysed as in :func:`crossed_interval`, so what the
    arms share (a hard prompt, an unlucky seed's data order) cancels. Identical inputs give 0 with
    interval [0, 0]."""
    xa, xb = _cells(xa), _cells(xb)
    if xa.shape != xb.shape:
        raise UserError(f"paired difference: cells of shape {xa.shape} and {xb.shape}; "
                        "align both arms on the same seeds and units first")
    va, za = linearise(xa, measure)
    vb, zb = linearise(xb, measure)
    return _interval_record(va - vb, crossed_variance(za - zb), xa.shape[0], xa.shape[1], alpha)


def _cells(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[1] == 0:
        raise UserError(f"crossed interval: need cells [seeds, units, columns], got shape {x.shape}")
    return x


# ----------------------------------------------------------------------------- crossed bootstrap


def crossed_weights(rng: np.random.Generator, n_seeds: int, n_units: int, n_boot: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap multiplicities: seeds ``[n_boot, S]`` and units ``[n_boot, U]``, each row a
    multinomial draw (sampling with replacement); one unit row serves every seed and every arm."""
    v = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot).astype(np.float64)
    w = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot).astype(np.float64)
    return v, w


def crossed_bootstrap(arms: list[np.ndarray], statistic: Callable[[list[np.ndarray]], np.ndarray],
                      n_boot: int = 1000, seed: int = 0, paired_seeds: bool = True) -> np.ndarray:
    """Replicates of ``statistic`` under crossed resampling of seeds and units.

    arms: one or more arrays ``[S, U, ...]`` on the same units. In each replicate the units are drawn
    once (the same for every seed and every arm) and the seeds are drawn with replacement (the same
    draw for every arm when ``paired_seeds``, else one per arm). ``statistic`` receives, per arm,
    the weighted sums over seeds and units ``[b, ...]`` and returns ``[b]``. Returns ``[n_boot]``."""
    if n_boot < 1:
        raise UserError(f"n_boot={n_boot}: need at least 1 bootstrap replicate")
    arms = [np.asarray(a, np.float64) for a in arms]
    S, U = arms[0].shape[:2]
    rng = np.random.default_rng(seed)
    per = max(1, _CHUNK_CELLS // max(S * U * int(np.prod(arms[0].shape[2:], dtype=int)), 1))
    out, done = [], 0
    while done < n_boot:
        b = min(per, n_boot - done)
        v, w = crossed_weights(rng, S, U, b)
        sums = []
        for i, a in enumerate(arms):
            vi = v if (paired_seeds or i == 0) else crossed_weights(rng, a.shape[0], U, b)[0]
            sums.append(np.einsum("bs,bu,su...->b...", vi, w, a, optimize=True))
        out.append(np.asarray(statistic(sums), np.float64))
        done += b
    return np.concatenate(out)


def percentile(boots: np.ndarray, alpha: float) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN when none is finite)."""
    b = np.asarray(boots, np.float64).ravel()
    b = b[np.isfinite(b)]
    if b.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(b, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_record(value: float, boots: np.ndarray, alpha: float = 0.05) -> dict:
    """``{value, lo, hi, lo90, hi90, n_boot, interval: "crossed-bootstrap"}`` from replicates."""
    lo, hi = percentile(boots, alpha)
    lo90, hi90 = percentile(boots, EQUIVALENCE_ALPHA)
    return {"value": float(value), "lo": lo, "hi": hi, "lo90": lo90, "hi90": hi90,
            "n_boot": int(np.isfinite(boots).sum()), "interval": "crossed-bootstrap"}


# ----------------------------------------------------------------------------- group gaps


def _group_sums(x: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """x: [..., N, C] cell sums, groups: [..., N] codes (−1: left out) → [..., G, C]."""
    N, C = x.shape[-2:]
    lead = np.broadcast_shapes(x.shape[:-2], np.shape(groups)[:-1])
    g = np.broadcast_to(groups, lead + (N,)).reshape(-1, N)
    xs = np.broadcast_to(x, lead + (N, C)).reshape(-1, N, C)
    B = g.shape[0]
    flat = np.where(g >= 0, np.arange(B)[:, None] * n_groups + g, B * n_groups)
    out = np.stack([np.bincount(flat.ravel(), weights=xs[..., c].ravel(),
                                minlength=B * n_groups + 1)[:-1] for c in range(C)], axis=-1)
    return out.reshape(lead + (n_groups, C))


def _spread(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """max − min and the variance over groups (last axis) of group values; NaN if any is NaN."""
    return values.max(axis=-1) - values.min(axis=-1), values.var(axis=-1)


def _permuted_labels(rng: np.random.Generator, groups: np.ndarray, strata: np.ndarray, n: int
                     ) -> np.ndarray:
    """[n, N] group labels permuted among cells of the same stratum (integer codes)."""
    order = np.argsort(strata, kind="stable")  # cells by stratum
    shuffled = np.argsort(strata + rng.random((n, len(strata))), axis=1)  # by stratum, random within
    out = np.empty((n, len(groups)), dtype=groups.dtype)
    out[:, order] = groups[shuffled]
    return out


def group_gap(x: np.ndarray, groups: np.ndarray, measure: Measure, strata: np.ndarray | None = None,
              n_perm: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Max − min over groups of ``measure``, with its value expected when groups do not differ.

    x: [N, C] cell sums (seeds already summed), groups: [N] codes 0..G−1 (−1 leaves a cell out),
    strata: [N] permutation strata (e.g. the template a prompt was written from; None: one
    stratum). Group labels are permuted within strata ``n_perm`` times; then
    - ``gap``: observed max − min; ``null_gap``: its mean over permutations (what noise alone gives);
    - ``value`` = gap − null_gap (the excess) with interval [gap − q₉₇.₅, gap − q₂.₅] of the permutation
      distribution (lo/hi; lo90/hi90 at 5%/95%): it covers 0 at the nominal rate when the groups do
      not differ;
    - ``dispersion``: variance over groups of the group values, ``p_value``: its permutation
      p-value (1 + #{perm ≥ observed}) / (1 + n_perm);
    - ``max_group``, ``min_group``: codes."""
    x, groups = np.asarray(x, np.float64), np.asarray(groups)
    strata = np.zeros(len(groups), int) if strata is None else pd.factorize(np.asarray(strata))[0]
    keep = groups >= 0  # left-out cells take no part, in the observed gap or the permutations
    x, groups, strata = x[keep], groups[keep], strata[keep]
    G = int(groups.max()) + 1
    vals = measure(_group_sums(x, groups, G))
    gap, disp = _spread(vals)
    rng = np.random.default_rng(seed)
    perm = _permuted_labels(rng, groups, strata, n_perm)
    pv = measure(_group_sums(x, perm, G))
    pgap, pdisp = _spread(pv)
    null = float(np.nanmean(pgap))
    q = lambda a: np.nanquantile(pgap, a)  # noqa: E731
    return {"gap": float(gap), "null_gap": null, "value": float(gap - null),
            "lo": float(gap - q(1 - alpha / 2)), "hi": float(gap - q(alpha / 2)),
            "lo90": float(gap - q(1 - EQUIVALENCE_ALPHA / 2)), "hi90": float(gap - q(EQUIVALENCE_ALPHA / 2)),
            "dispersion": float(disp), "p_value": float((1 + np.sum(pdisp >= disp - 1e-12)) / (1 + n_perm)),
            "max_group": int(np.nanargmax(vals)), "min_group": int(np.nanargmin(vals)),
            "n_perm": int(n_perm), "interval": "permutation"}


def max_min(measure: Measure) -> Callable[[np.ndarray], np.ndarray]:
    """Group sums ``[..., G, C]`` → max − min over groups of ``measure`` ``[...]``."""
    return lambda sums: _spread(measure(sums))[0]


def gap_difference(xa: np.ndarray, xb: np.ndarray, gap: Callable[[np.ndarray], np.ndarray],
                   n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired difference of a disparity over groups, arm a minus arm b, crossed bootstrap interval.

    xa, xb: [S, U, G, C] cell sums per seed, unit and group on the same seeds and units (a unit is
    what is resampled: a template that has one prompt per group, or a test row that belongs to one
    group and is zero elsewhere); gap: group sums ``[..., G, C]`` → disparity ``[...]``, e.g.
    :func:`max_min` of a measure. Each replicate draws units once for both arms and every seed."""
    xa, xb = np.asarray(xa, np.float64), np.asarray(xb, np.float64)
    point = gap(xa.sum(axis=(0, 1))) - gap(xb.sum(axis=(0, 1)))
    boots = crossed_bootstrap([xa, xb], lambda s: gap(s[0]) - gap(s[1]), n_boot, seed)
    return bootstrap_record(float(point), boots, alpha)
