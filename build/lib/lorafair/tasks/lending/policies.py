"""Reference policies for the lending environment: max-profit and equal-opportunity thresholds.

A (randomized) threshold ``Threshold(cutoff, p_cutoff)`` approves every bin above ``cutoff``,
bin ``cutoff`` itself with probability ``p_cutoff``, and nothing below.

* ``max_profit_threshold``: one threshold for both groups approving exactly the bins whose expected
  profit ``p * loan_amount * interest_rate - (1 - p) * loan_amount`` is positive (Liu et al. 2018,
  "MaxUtil").
* ``equal_opportunity_thresholds``: per-group thresholds that maximise expected profit per
  applicant subject to equal true positive rates (Hardt, Price and Srebro 2016; "EqOpt" in Liu et
  al. 2018), computed on given group distributions (default: the initial ones).
  Method: for a group with distribution pi and repayment probabilities p (non-decreasing), the
  most profitable way to reach a true positive rate tau approves bins from the top down (profit per
  unit of TPR, interest + loan - loan / p, grows with p), randomising at one boundary bin. Each
  group's TPR is then a piecewise-linear function of its approval vector with a kink at every bin,
  so total profit, as a function of the common TPR tau, is piecewise linear with kinks only at the
  two groups' per-bin TPR breakpoints; the maximum over those breakpoints is the exact optimum.
  Equal TPRs hold exactly for the distributions used; under the environment's dynamics the
  distributions drift, so TPRs stay equal only while the populations stay near them.
* ``EqualOpportunityOracle``: the equal-opportunity thresholds re-optimised at every step on each
  environment's current group distributions, as ML-fairness-gym's ``OracleThresholdAgent`` does
  (it reads the environment's true state); the fixed-at-start thresholds above remain available.
* ``threshold_policy`` turns thresholds into a batch ``policy_fn`` for ``env.rollout``,
  optionally logging each decision next to the one the other group's threshold gives
  (``DecisionLog``, for the flip rate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lorafair.errors import UserError
from lorafair.tasks.lending.env import (
    LendingParams,
    Obs,
    PolicyFn,
)

DECISION_WORDS: tuple[str, str] = (" deny", " approve")


@dataclasses.dataclass(frozen=True)
class Threshold:
    """Approve bins > cutoff, bin == cutoff with probability p_cutoff, nothing below."""

    cutoff: int
    p_cutoff: float = 1.0

    def approve_probs(self, n_bins: int) -> np.ndarray:
        """Approval probability per bin, [n_bins] float64."""
        if not 0 <= self.cutoff < n_bins or not 0.0 <= self.p_cutoff <= 1.0:
            raise UserError(
                f"threshold {self}: cutoff must be in [0, {n_bins - 1}] and p_cutoff in [0, 1]"
            )
        a = (np.arange(n_bins) > self.cutoff).astype(np.float64)
        a[self.cutoff] = self.p_cutoff
        return a


def _margins(params: LendingParams) -> np.ndarray:
    """Expected profit of approving one applicant per bin, [C] float64."""
    p = np.asarray(params.success_probs, dtype=np.float64)
    return p * params.loan_amount * params.interest_rate - (1.0 - p) * params.loan_amount


def max_profit_threshold(params: LendingParams | None = None) -> Threshold:
    """The single threshold approving exactly the bins with positive expected profit."""
    params = params or LendingParams()
    pos = np.flatnonzero(_margins(params) > 0)
    if pos.size == 0:
        return Threshold(params.n_bins - 1, 0.0)
    return Threshold(int(pos[0]), 1.0)


def tpr_of(approve: np.ndarray, dist: np.ndarray, success_probs: np.ndarray) -> float:
    """Expected TPR of approval probabilities ``approve`` [C] on group distribution ``dist`` [C]."""
    w = np.asarray(dist, np.float64) * np.asarray(success_probs, np.float64)
    return float(w @ approve / w.sum()) if w.sum() > 0 else float("nan")


def _threshold_for_tpr(tau: float, w: np.ndarray) -> Threshold:
    """Top-down threshold reaching TPR ``tau`` for repaying mass per bin ``w`` [C]."""
    c = w.size
    total = w.sum()
    if total <= 0:
        return Threshold(c - 1, 0.0)
    target = tau * total
    above = 0.0  # repaying mass strictly above bin k
    for k in range(c - 1, -1, -1):
        if w[k] > 0 and above + w[k] >= target - 1e-12:
            return Threshold(k, float(np.clip((target - above) / w[k], 0.0, 1.0)))
        above += w[k]
    return Threshold(0, 1.0)


def equal_opportunity_thresholds(params: LendingParams | None = None,
                                 dists: np.ndarray | None = None) -> tuple[Threshold, Threshold]:
    """Per-group thresholds maximising expected profit subject to equal TPRs.

    dists: [2, C] group distributions to optimise on (rows are normalised); default the
    initial distributions of ``params``. Groups are weighted by ``1 - group_prob`` and
    ``group_prob``. Method in the module docstring.
    """
    params = params or LendingParams()
    p = np.asarray(params.success_probs, dtype=np.float64)
    d = np.asarray(params.init_dists if dists is None else dists, dtype=np.float64)
    if d.shape != (2, p.size) or np.any(d < 0) or np.any(d.sum(1) <= 0):
        raise UserError(
            f"equal_opportunity_thresholds: dists must be [2, {p.size}] non-negative with "
            f"positive row sums, got shape {d.shape}"
        )
    d = d / d.sum(1, keepdims=True)
    weights = np.array([1.0 - params.group_prob, params.group_prob])
    margins = _margins(params)
    w = d * p  # repaying mass per group and bin
    candidates = {0.0, 1.0}
    for g in (0, 1):
        if w[g].sum() > 0:
            candidates |= set(np.cumsum(w[g][::-1]) / w[g].sum())
    best, best_profit = None, -np.inf
    for tau in sorted(candidates):
        ths = tuple(_threshold_for_tpr(tau, w[g]) for g in (0, 1))
        profit = sum(weights[g] * d[g] @ (margins * ths[g].approve_probs(p.size)) for g in (0, 1))
        if profit > best_profit + 1e-12:
            best, best_profit = ths, profit
    return best


def expected_profit(thresholds: Sequence[Threshold], params: LendingParams | None = None,
                    dists: np.ndarray | None = None) -> float:
    """Expected profit per applicant of per-group thresholds on distributions ``dists`` [2, C]."""
    params = params or LendingParams()
    d = np.asarray(params.init_dists if dists is None else dists, dtype=np.float64)
    weights = (1.0 - params.group_prob, params.group_prob)
    m = _margins(params)
    return float(sum(weights[g] * d[g] @ (m * thresholds[g].approve_probs(params.n_bins))
                     for g in (0, 1)))


class EqualOpportunityOracle:
    """Equal-opportunity thresholds of given group distributions ([2, C] -> two Thresholds),
    re-optimised on each call and cached by distribution (populations change one agent at a time)."""

    def __init__(self, params: LendingParams | None = None):
        self.params = params or LendingParams()
        self._cache: dict[bytes, tuple[Threshold, Threshold]] = {}

    def __call__(self, dists: np.ndarray) -> tuple[Threshold, Threshold]:
        d = np.asarray(dists, dtype=np.float64)
        key = d.tobytes()
        if key not in self._cache:
            self._cache[key] = equal_opportunity_thresholds(self.params, d)
        return self._cache[key]


Thresholds = Threshold | Sequence[Threshold] | EqualOpportunityOracle


class DecisionLog:
    """Decisions of a batch policy in call order: action and swapped action, [steps, n_envs] each,
    with p(approve) over the two words (NaN for threshold policies)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []  # each [n_envs, 4]: action, swapped, p, p_swapped

    def add(self, a, a_sw, p, p_sw) -> None:
        self.parts.append(np.column_stack([a, a_sw, p, p_sw]).astype(np.float64))

    def rows_of(self, df: pd.DataFrame) -> np.ndarray:
        """The logged decisions of the rows of a rollout frame decided by the policy (``call`` >= 0),
        in the frame's order, [rows, 4]."""
        if not self.parts:
            return np.zeros((0, 4))
        n = self.parts[0].shape[0]
        decided = df[df["call"] >= 0]
        return np.concatenate(self.parts)[decided["call"].to_numpy() * n + decided["env"].to_numpy()]


def decide(th: Threshold, b: int, u: float) -> int:
    """Approve bin ``b`` under threshold ``th`` with the uniform draw ``u``."""
    return int(b > th.cutoff or (b == th.cutoff and u < th.p_cutoff))


def per_env_thresholds(thresholds: Thresholds, n: int, dists: np.ndarray | None
                       ) -> list[tuple[Threshold, Threshold]]:
    """The (group 0, group 1) thresholds in force in each of ``n`` environments: fixed ones, or the
    oracle's on each environment's distributions ``dists`` [n, 2, C]."""
    if isinstance(thresholds, EqualOpportunityOracle):
        return [thresholds(d) for d in dists]
    ths = (thresholds, thresholds) if isinstance(thresholds, Threshold) else tuple(thresholds)
    if len(ths) != 2:
        raise UserError(f"threshold_policy: give one threshold or two (one per group), got {ths}")
    return [ths] * n


def threshold_policy(thresholds: Thresholds, seed: int = 0, log: DecisionLog | None = None) -> PolicyFn:
    """A batch policy for ``rollout``: one threshold for both groups, one per group, or an
    ``EqualOpportunityOracle`` (then the policy asks the rollout for the current distributions).

    Randomised boundary decisions come from a generator seeded with ``seed`` and consumed one
    number per observation in call order. With ``log``, each decision is logged next to the
    swapped one, the other group's threshold under the same uniform draw (so randomised boundary
    bins flip only when needed).
    """
    if not isinstance(thresholds, EqualOpportunityOracle):
        per_env_thresholds(thresholds, 0, None)  # bad thresholds fail here, not at the first step
    rng = np.random.default_rng(seed)

    def policy(batch: list[Obs], dists: np.ndarray | None = None) -> list[int]:
        u = rng.random(len(batch))
        ths = per_env_thresholds(thresholds, len(batch), dists)
        a = [decide(th[int(ob["group"])], int(ob["bin"]), ui) for ob, ui, th in zip(batch, u, ths)]
        if log is not None:
            sw = [decide(th[1 - int(ob["group"])], int(ob["bin"]), ui) for ob, ui, th in zip(batch, u, ths)]
            nan = np.full(len(batch), np.nan)
            log.add(a, sw, nan, nan)
        return a

    policy.needs_dists = isinstance(thresholds, EqualOpportunityOracle)
    return policy
