"""Simulated studies for the group-sequential decisions (lorafair.stats.sequential).

Each simulated study is the arm − full difference on a crossed design, cells ``[seeds, units]``:
true difference θ + seed effect + unit effect + seed × unit interaction, the variance split as in
the coverage cases of ``tests/test_stats.py`` (shares of the grand mean's variance at 3 seeds).
Looks add seeds; an arm stops at its first decision. Run as a script to print the error rates, the
naive rates (fixed-sample intervals at every look) and the expected seeds used, as JSON::

    PYTHONPATH=src python tests/sequential_sim.py
"""

from __future__ import annotations

import json
import sys

import numpy as np

from lorafair.stats import equivalence, intervals, sequential

WITHIN = equivalence.WITHIN

CASES = {  # shares (seed, unit, seed × unit) at 3 seeds, units, nested units
    "crossed": ((1 / 3, 1 / 3, 1 / 3), 100),
    "seed-dominated": ((0.8, 0.1, 0.1), 100),
    "unit-dominated": ((0.1, 0.8, 0.1), 100),
    "interaction-dominated": ((0.1, 0.1, 0.8), 100),
    "few units": ((0.5, 0.4, 0.1), 12),
}
LOOKS = (3, 6, 9, 12)
DELTA = 1.5  # margin, in units of the standard error of the difference at 3 seeds


def cells(rng: np.random.Generator, shares: tuple, U: int, theta: float, n: int, S: int = 12) -> np.ndarray:
    """[n, S, U] simulated differences with mean θ; the grand mean's variance at 3 seeds is 1."""
    sa, sb, sc = (np.sqrt(p * f) for p, f in zip(shares, (3, U, 3 * U)))
    return theta + rng.normal(0, sa, (n, S, 1)) + rng.normal(0, sb, (n, 1, U)) + rng.normal(0, sc, (n, S, U))


def fixed_schedule(x: np.ndarray, delta: float, looks=LOOKS, max_seeds: int | None = None,
                   naive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Decisions and seeds used of every study ``x: [n, S, U]`` with looks at ``looks`` seeds.

    At each look the crossed-design interval (``intervals.crossed_variance``, ``half_width``) at
    the look's levels (``sequential.look_levels``; fixed 0.05 and 0.10 when ``naive``), decided as
    ``sequential.decide_look`` decides (checked against it in the tests). Returns (decision words
    [n] with "open" for none, seeds used [n])."""
    max_seeds = max_seeds or looks[-1]
    n = x.shape[0]
    out, used = np.full(n, "open", dtype=object), np.full(n, looks[-1])
    for k, s in enumerate(looks):
        comp = intervals.crossed_variance(x[:, :s])
        d = x[:, :s].mean(axis=(1, 2))
        fixed = {"level_test": 0.05, "level_equiv": 0.10}
        lv = fixed if naive else sequential.look_levels(looks[:k + 1], max_seeds)[-1]
        hw_t, hw_e = intervals.half_width(comp, lv["level_test"]), intervals.half_width(comp, lv["level_equiv"])
        eq = (d - hw_e > -delta) & (d + hw_e < delta)
        up, down = d - hw_t > 0, d + hw_t < 0
        now = out == "open"
        out[now & eq & ~up & ~down] = "equivalent"
        out[now & up & ~eq], out[now & down & ~eq] = "higher", "lower"
        out[now & up & eq], out[now & down & eq] = "higher" + WITHIN, "lower" + WITHIN
        used[now & (eq | up | down)] = s
    return out, used


def claims_equivalent(words: np.ndarray) -> np.ndarray:
    """Decisions that put the difference inside ±δ: "equivalent" and "higher/lower, within δ"."""
    return np.array([equivalence.is_equivalent(w) for w in words], dtype=bool)


def claims(words: np.ndarray, word: str) -> np.ndarray:
    """Decisions that declare a non-zero difference in the direction ``word`` (within δ or not)."""
    return np.array([w == word or w == word + WITHIN for w in words], dtype=bool)


def planned(x: np.ndarray, delta: float, first: int = 3, max_seeds: int = 12, step: int = 1
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same with the planner choosing each next look's size (``sequential.next_size``) and each
    look decided by ``sequential.decide_look`` on the crossed-difference record. Returns
    (decisions, seeds used, number of looks)."""
    n = x.shape[0]
    out, used, looks = np.full(n, "open", dtype=object), np.zeros(n, int), np.zeros(n, int)
    for i in range(n):
        past = [first]
        while True:
            rec = intervals.crossed_interval(x[i, :past[-1], :, None])
            got = sequential.decide_look(rec, delta, sequential.look_levels(past, max_seeds)[-1])["decision"]
            if got != "open" or past[-1] >= max_seeds:
                out[i], used[i], looks[i] = got, past[-1], len(past)
                break
            past.append(sequential.next_size([(rec, delta)], past, max_seeds, step)[0])
    return out, used, looks


def rates(words: np.ndarray) -> dict:
    """Shares of studies claiming equivalence, a higher and a lower difference."""
    return {"equivalent": float(claims_equivalent(words).mean()), "higher": float(claims(words, "higher").mean()),
            "lower": float(claims(words, "lower").mean())}


def report(n: int = 2000, n_planned: int = 300, seed: int = 1) -> dict:
    """Rates of claimed equivalence at θ = δ and "higher" (worse, for a lower-is-better metric) at θ = 0,
    sequential and naive, and the mean seeds used at θ = 0, δ/2, δ, 2δ, per case."""
    rng = np.random.default_rng(seed)
    res = {}
    for case, (shares, U) in CASES.items():
        row = {}
        for name, theta in (("at_delta", DELTA), ("at_zero", 0.0), ("at_half", DELTA / 2), ("at_2delta", 2 * DELTA)):
            x = cells(rng, shares, U, theta, n)
            seq, used = fixed_schedule(x, DELTA)
            naive, used_naive = fixed_schedule(x, DELTA, naive=True)
            pl, used_pl, looks_pl = planned(x[:n_planned], DELTA, step=3)
            row[name] = {"theta": theta,
                         "sequential": {**rates(seq), "mean_seeds": float(used.mean())},
                         "naive": {**rates(naive), "mean_seeds": float(used_naive.mean())},
                         "planner": {**rates(pl), "mean_seeds": float(used_pl.mean()),
                                     "mean_looks": float(looks_pl.mean()), "n": int(n_planned)}}
        res[case] = row
    return {"delta": DELTA, "looks": LOOKS, "n": n, "cases": res}


if __name__ == "__main__":
    json.dump(report(*(int(a) for a in sys.argv[1:])), sys.stdout, indent=1)
