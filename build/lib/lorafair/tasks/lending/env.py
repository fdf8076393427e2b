"""A two-group credit environment for sequential lending decisions, and its rollout measures.

The setting is the one of Liu, Dean, Rolf, Simchowitz and Hardt, "Delayed Impact of Fair Machine
Learning" (ICML 2018), in the discrete form of D'Amour et al., "Fairness is not Static:
Deeper Understanding of Long Term Fairness via Simulation Studies" (FAT* 2020, ML-fairness-gym's
lending environment). Each step one applicant arrives; the bank approves (1) or denies (0).

Dynamics
    * Each group g in {0, 1} is a population of ``population_size`` agents spread over C credit
      bins (``counts``, shape [2, C]); a group's distribution is ``counts[g] / population_size``.
    * An applicant's group is 1 with probability ``group_prob``; its bin is the bin of an agent
      drawn uniformly from that group's population; whether it *would repay* a loan is drawn at
      arrival, with probability ``success_probs[bin]``, before any decision (so the true positive
      rate, approvals among would-repay applicants, and counterfactual decisions are well defined).
    * Approved: the bank earns ``loan_amount * interest_rate`` if the applicant repays and loses
      ``loan_amount`` if it defaults (ML-fairness-gym's ``_CashUpdater``); the agent moves one bin
      up on repayment and one bin down on default (clipped to [0, C-1]). Denied: nothing changes.
      Population counts are conserved.
    * Burn-in: for the first ``burnin`` steps of an episode every applicant is approved whatever
      the action (ML-fairness-gym's agents take their default action, approve, while ``step <
      burnin``). The default, 50, is that of ML-fairness-gym's lending experiment
      (``experiments/lending.py``; its FAT* 2020 runs of the oracle agent use 1). Burn-in decisions
      count in every measure, as they do in ML-fairness-gym's metrics over the whole history.
    * Bank's cash: with ``bank_starting_cash`` set, the bank starts with that cash, every reward
      is added to it, and the episode terminates once the cash is below ``loan_amount`` (the bank
      cannot make another loan; ML-fairness-gym's ``_is_done``; its experiment starts with 100,
      its FAT* runs with 10,000). ``None`` (the default here): no cash limit and no termination, so
      every environment of a rollout runs the same number of steps.
    * Three uniforms are drawn per applicant (group, bin, repayment) whatever the decisions, so two
      policies run under the same seed see the same random stream (common random numbers).

Defaults (``LendingParams()``), from ML-fairness-gym ``environments/lending_params.py``
(``DELAYED_IMPACT_SUCCESS_PROBS``, ``DELAYED_IMPACT_CLUSTER_PROBS``) and its lending experiments:
    * C = 7 bins, repayment probabilities ``(0.1, 0.2, 0.45, 0.6, 0.65, 0.7, 0.7)``.
    * group 0 (advantaged) starts with ``(0.0, 0.1, 0.1, 0.2, 0.3, 0.3, 0.0)``,
      group 1 (disadvantaged) with ``(0.1, 0.1, 0.2, 0.3, 0.3, 0.0, 0.0)`` (shifted one bin down).
    * ``group_prob = 0.5``, ``interest_rate = 1.0``, ``loan_amount = 1.0``, ``burnin = 50``.
    * ``population_size = 100`` per group: one approved applicant moves 1/100 of the group's mass,
      the same as ML-fairness-gym's ``cluster_shift_increment = 0.01``.

Text
    ``describe(obs)`` writes an observation as a prompt, e.g. "Applicant from group A with credit
    score bin 4 of 7. Decision:" (bins shown 1-based).

``rollout`` runs a batch policy in several environments at once and returns one row per applicant;
the task's measures of those rows are in ``lorafair.tasks.lending.task`` (``env_series``,
``final_by_env``, ``pooled_timeseries``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

from lorafair.errors import UserError

SUCCESS_PROBS: tuple[float, ...] = (0.1, 0.2, 0.45, 0.6, 0.65, 0.7, 0.7)
INIT_DISTS: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.0, 0.1, 0.1, 0.2, 0.3, 0.3, 0.0),
    (0.1, 0.1, 0.2, 0.3, 0.3, 0.0, 0.0),
)
DEFAULT_NAMES: tuple[str, str] = ("group A", "group B")
DEFAULT_TEMPLATE = "Applicant from {group} with credit score bin {bin} of {n_bins}. Decision:"

Obs = dict[str, int]
PolicyFn = Callable[[list[Obs]], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class LendingParams:
    """Environment parameters; defaults and their source are in the module docstring."""

    success_probs: tuple[float, ...] = SUCCESS_PROBS
    init_dists: tuple[tuple[float, ...], tuple[float, ...]] = INIT_DISTS
    population_size: int = 100
    group_prob: float = 0.5
    interest_rate: float = 1.0
    loan_amount: float = 1.0
    burnin: int = 50  # steps at the start of an episode in which every applicant is approved
    bank_starting_cash: float | None = None  # None: no cash limit; else the episode ends when cash < loan_amount

    def __post_init__(self) -> None:
        p = np.asarray(self.success_probs, dtype=np.float64)
        if p.ndim != 1 or p.size < 2 or np.any((p < 0) | (p > 1)) or np.any(np.diff(p) < 0):
            raise UserError(
                f"lending params: success_probs={self.success_probs!r} must be at least 2 "
                "non-decreasing probabilities in [0, 1]; give one repayment probability per bin"
            )
        d = np.asarray(self.init_dists, dtype=np.float64)
        if d.shape != (2, p.size) or np.any(d < 0) or not np.allclose(d.sum(1), 1.0, atol=1e-6):
            raise UserError(
                f"lending params: init_dists must be 2 rows of {p.size} non-negative numbers "
                f"summing to 1 (one per bin of success_probs), got {self.init_dists!r}"
            )
        if int(self.population_size) != self.population_size or self.population_size < 1:
            raise UserError(
                f"lending params: population_size={self.population_size!r} must be a positive "
                "integer (agents per group)"
            )
        if not 0.0 <= self.group_prob <= 1.0:
            raise UserError(
                f"lending params: group_prob={self.group_prob!r} must be in [0, 1] "
                "(probability that an applicant is from group 1)"
            )
        if self.interest_rate < 0 or self.loan_amount < 0:
            raise UserError(
                "lending params: interest_rate and loan_amount must be non-negative, got "
                f"{self.interest_rate!r} and {self.loan_amount!r}"
            )
        if int(self.burnin) != self.burnin or self.burnin < 0:
            raise UserError(f"lending params: burnin={self.burnin!r} must be a non-negative integer "
                            "(steps in which every applicant is approved)")
        if self.bank_starting_cash is not None and not self.bank_starting_cash >= 0:
            raise UserError(f"lending params: bank_starting_cash={self.bank_starting_cash!r} must be "
                            "non-negative, or null for no cash limit")
        object.__setattr__(self, "success_probs", tuple(float(x) for x in p))
        object.__setattr__(self, "init_dists", tuple(tuple(float(x) for x in row) for row in d))

    @property
    def n_bins(self) -> int:
        return len(self.success_probs)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LendingParams:
        """Build from a config mapping; unknown keys are an error."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(
                f"lending params: unknown key(s) {unknown}; known keys are {sorted(known)}"
            )
        if "success_probs" in d:
            d["success_probs"] = tuple(d["success_probs"])
        if "init_dists" in d:
            d["init_dists"] = tuple(tuple(r) for r in d["init_dists"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def initial_counts(params: LendingParams) -> np.ndarray:
    """Agents per group and bin at reset, [2, C] int64: largest-remainder rounding of N * dist."""
    n = int(params.population_size)
    out = np.zeros((2, params.n_bins), dtype=np.int64)
    for g, dist in enumerate(params.init_dists):
        exact = np.asarray(dist, dtype=np.float64) * n
        base = np.floor(exact + 1e-9).astype(np.int64)
        rest = n - int(base.sum())
        order = np.argsort(-(exact - base), kind="stable")
        base[order[:rest]] += 1
        out[g] = base
    return out


@dataclasses.dataclass(frozen=True)
class Applicant:
    """The applicant waiting for a decision; ``would_repay`` is hidden from the policy."""

    group: int
    bin: int
    would_repay: bool


class LendingEnv(gym.Env):
    """Gymnasium environment; observation ``{"group": int, "bin": int}``, action 1 approve / 0 deny.

    ``step`` decides the current applicant and returns the next one. ``info`` holds
    ``would_repay`` (of the applicant now observed), ``dists`` ([2, C] float32 group
    distributions), ``counts`` ([2, C] int64), ``profit`` (cumulative), ``cash`` (the bank's cash,
    None without a limit) and, after a step, ``decided`` (group, bin, action, would_repay, repaid,
    reward and burnin of the applicant just decided; during burn-in the action is 1 whatever was
    asked). Episodes terminate when the bank's cash falls below ``loan_amount`` (only with
    ``bank_starting_cash``); they are truncated after ``max_steps`` decisions when given.
    """

    metadata = {"render_modes": []}

    def __init__(self, params: LendingParams | None = None, max_steps: int | None = None):
        self.params = params or LendingParams()
        self.max_steps = max_steps
        c = self.params.n_bins
        self.observation_space = gym.spaces.Dict(
            {"group": gym.spaces.Discrete(2), "bin": gym.spaces.Discrete(c)}
        )
        self.action_space = gym.spaces.Discrete(2)
        self._p = np.asarray(self.params.success_probs, dtype=np.float64)
        self.counts = initial_counts(self.params)
        self.profit = 0.0
        self.cash = self.params.bank_starting_cash
        self.t = 0
        self.done = False
        self.applicant: Applicant | None = None

    def _draw(self) -> Applicant:
        u = self.np_random.random(3)
        group = int(u[0] < self.params.group_prob)
        cdf = np.cumsum(self.counts[group])
        b = int(np.searchsorted(cdf, u[1] * cdf[-1], side="right"))
        b = min(b, self.params.n_bins - 1)
        return Applicant(group=group, bin=b, would_repay=bool(u[2] < self._p[b]))

    def _obs(self) -> Obs:
        return {"group": self.applicant.group, "bin": self.applicant.bin}

    def _info(self) -> dict[str, Any]:
        return {
            "would_repay": self.applicant.would_repay,
            "dists": (self.counts / self.params.population_size).astype(np.float32),
            "counts": self.counts.copy(),
            "profit": self.profit,
            "cash": self.cash,
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.counts = initial_counts(self.params)
        self.profit = 0.0
        self.cash = self.params.bank_starting_cash
        self.t = 0
        self.done = False
        self.applicant = self._draw()
        return self._obs(), self._info()

    def step(self, action):
        if self.applicant is None:
            raise UserError("lending env: call reset() before step()")
        if int(action) not in (0, 1):
            raise UserError(f"lending env: action {action!r} must be 1 (approve) or 0 (deny)")
        if self.done:
            raise UserError("lending env: the episode ended (the bank's cash is below one loan); call reset()")
        burnin = self.t < self.params.burnin
        a, app = (1 if burnin else int(action)), self.applicant
        repaid, reward = False, 0.0
        if a == 1:
            repaid = app.would_repay
            reward = self.params.loan_amount * self.params.interest_rate if repaid else -self.params.loan_amount
            new_bin = min(max(app.bin + (1 if repaid else -1), 0), self.params.n_bins - 1)
            self.counts[app.group, app.bin] -= 1
            self.counts[app.group, new_bin] += 1
        self.profit += reward
        if self.cash is not None:
            self.cash += reward
            self.done = self.cash < self.params.loan_amount
        self.t += 1
        decided = {"group": app.group, "bin": app.bin, "action": a, "would_repay": app.would_repay,
                   "repaid": repaid, "reward": reward, "burnin": burnin}
        self.applicant = self._draw()
        info = self._info()
        info["decided"] = decided
        truncated = self.max_steps is not None and self.t >= self.max_steps
        return self._obs(), float(reward), self.done, truncated, info

    def mean_bins(self) -> np.ndarray:
        """Mean credit bin of each group's population, [2] float32."""
        bins = np.arange(self.params.n_bins, dtype=np.float64)
        return (self.counts @ bins / self.params.population_size).astype(np.float32)


def describe(obs: Obs, names: Sequence[str] = DEFAULT_NAMES, template: str = DEFAULT_TEMPLATE,
             n_bins: int = len(SUCCESS_PROBS)) -> str:
    """The observation as text. Template fields: {group} (the group's name), {bin} (1-based),
    {n_bins}."""
    return template.format(group=names[int(obs["group"])], bin=int(obs["bin"]) + 1, n_bins=n_bins)


def env_seeds(seed: int, n_envs: int) -> list[int]:
    """Independent reset seeds for ``n_envs`` parallel environments of one rollout."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n_envs)]


def rollout(policy_fn: PolicyFn, n_envs: int, T: int, seed: int,
            params: LendingParams | None = None) -> pd.DataFrame:
    """Run ``n_envs`` environments for ``T`` steps, deciding each step's applicants in one batch.

    Environment i is reset with ``env_seeds(seed, n_envs)[i]``; the result equals running each
    environment alone. The policy is not asked during burn-in (every applicant is approved);
    afterwards it gets the observations of every environment (a finished one's last applicant
    included, its decision ignored) and, when it has ``needs_dists = True``, also the
    environments' current group distributions as a second argument ([n_envs, 2, C]). An
    environment whose bank ran out of cash takes no more steps; the rollout ends when all have.

    Returns one row per (env, step) taken: env, step, group, bin, action, would_repay, repaid,
    reward (float32), mean_bin_0, mean_bin_1 (population mean bins after the step's decision),
    call (index of the policy call that decided the row; -1 in burn-in).
    """
    if n_envs < 1 or T < 1:
        raise UserError(f"lending rollout: n_envs={n_envs} and T={T} must both be at least 1")
    params = params or LendingParams()
    envs = [LendingEnv(params) for _ in range(n_envs)]
    obs = [env.reset(seed=s)[0] for env, s in zip(envs, env_seeds(seed, n_envs))]
    cols: dict[str, list] = {k: [] for k in ("env", "step", "group", "bin", "action", "would_repay",
                                             "repaid", "reward", "mean_bin_0", "mean_bin_1", "call")}
    calls = 0
    for t in range(T):
        if all(env.done for env in envs):
            break
        call = -1
        if t < params.burnin:
            actions = [1] * n_envs
        else:
            if getattr(policy_fn, "needs_dists", False):
                dists = np.stack([env.counts / params.population_size for env in envs])
                actions = list(policy_fn(list(obs), dists))
            else:
                actions = list(policy_fn(list(obs)))
            call, calls = calls, calls + 1
        if len(actions) != n_envs:
            raise UserError(
                f"lending rollout: policy returned {len(actions)} decisions for {n_envs} "
                "observations; return one 0/1 decision per observation"
            )
        for i, (env, a) in enumerate(zip(envs, actions)):
            if env.done:
                continue
            obs[i], _, _, _, info = env.step(a)
            d, mb = info["decided"], env.mean_bins()
            for k, v in (("env", i), ("step", t), ("group", d["group"]), ("bin", d["bin"]),
                         ("action", d["action"]), ("would_repay", d["would_repay"]),
                         ("repaid", d["repaid"]), ("reward", d["reward"]),
                         ("mean_bin_0", mb[0]), ("mean_bin_1", mb[1]), ("call", call)):
                cols[k].append(v)
    df = pd.DataFrame(cols)
    df = df.astype({"env": np.int64, "step": np.int64, "group": np.int64, "bin": np.int64,
                    "action": np.int64, "would_repay": bool, "repaid": bool,
                    "reward": np.float32, "mean_bin_0": np.float32, "mean_bin_1": np.float32,
                    "call": np.int64})
    return df.sort_values(["env", "step"], kind="stable").reset_index(drop=True)
