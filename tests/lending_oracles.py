"""Independent reference implementations of the lending measures and helpers used only by tests:
per-step measures computed group by group with plain pandas, to check the task's own
(`lorafair.tasks.lending.measures.env_series`, `pooled_timeseries`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lorafair.tasks.lending.env import (DEFAULT_NAMES, DEFAULT_TEMPLATE, SUCCESS_PROBS, LendingParams, Obs,
                                        PolicyFn, describe, rollout)
from lorafair.tasks.lending.policies import DECISION_WORDS


def timeseries(df: pd.DataFrame) -> pd.DataFrame:
    """Per group and step, from a ``rollout`` frame (long format, sorted by step then group).

    Columns: step, group, n (applicants so far, all envs), approval_rate (approved / applicants
    so far), tpr (approved among would-repay so far; NaN before the first would-repay), mean_bin
    (mean over envs of the group's population mean bin after the step), profit (mean over envs
    of the cumulative reward from the group's applicants).
    """
    steps = np.sort(df["step"].unique())
    n_envs = df["env"].nunique()
    rows = []
    for g in (0, 1):
        sub = df[df["group"] == g]
        per = pd.DataFrame({
            "n": sub.groupby("step").size(),
            "approved": sub.groupby("step")["action"].sum(),
            "pos": sub.groupby("step")["would_repay"].sum(),
            "tp": sub[sub["would_repay"]].groupby("step")["action"].sum(),
            "reward": sub.groupby("step")["reward"].sum().astype(np.float64),
        }).reindex(steps, fill_value=0).fillna(0).cumsum()
        with np.errstate(invalid="ignore", divide="ignore"):
            out = pd.DataFrame({
                "step": steps,
                "group": g,
                "n": per["n"].to_numpy().astype(np.int64),
                "approval_rate": np.where(per["n"] > 0, per["approved"] / per["n"], np.nan),
                "tpr": np.where(per["pos"] > 0, per["tp"] / per["pos"], np.nan),
                "mean_bin": df.groupby("step")[f"mean_bin_{g}"].mean()
                .reindex(steps).to_numpy(np.float64),
                "profit": per["reward"].to_numpy() / n_envs,
            })
        rows.append(out)
    ts = pd.concat(rows, ignore_index=True)
    return ts.sort_values(["step", "group"], kind="stable").reset_index(drop=True)


GAP_MEASURES = ("approval_rate", "tpr", "mean_bin", "profit")


def gaps(ts: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Group 0 minus group 1 for every measure of ``timeseries``: per step, and at the last step."""
    wide = ts.pivot(index="step", columns="group", values=list(GAP_MEASURES))
    per_step = pd.DataFrame({m: wide[(m, 0)] - wide[(m, 1)] for m in GAP_MEASURES})
    per_step = per_step.reset_index()
    final = {m: float(per_step[m].iloc[-1]) for m in GAP_MEASURES}
    return per_step, final


def describe_swapped(obs: Obs, names: Sequence[str] = DEFAULT_NAMES,
                     template: str = DEFAULT_TEMPLATE, n_bins: int = len(SUCCESS_PROBS)) -> str:
    """The same text with only the group words swapped (counterfactual prompt)."""
    return describe({"group": 1 - int(obs["group"]), "bin": obs["bin"]}, names, template, n_bins)


def rollout_pairs(policy: PolicyFn, n_envs: int, T: int, seed: int,
                  params: LendingParams | None = None, names: Sequence[str] = DEFAULT_NAMES,
                  template: str = DEFAULT_TEMPLATE) -> list[tuple[str, str]]:
    """(observation text, " approve" / " deny") for every decision the policy took in a rollout
    (burn-in approvals left out), env-major order."""
    params = params or LendingParams()
    df = rollout(policy, n_envs, T, seed, params)
    df = df[df["call"] >= 0]
    return [
        (describe({"group": g, "bin": b}, names, template, params.n_bins), DECISION_WORDS[a])
        for g, b, a in zip(df["group"].to_numpy(), df["bin"].to_numpy(), df["action"].to_numpy())
    ]
