"""The lending task's measures of rollout rows: cumulative per-step measures per environment and
group, each environment's final gaps, the pooled per-step series, and one policy's summary with
bootstrap intervals over environments (the resampling unit: decisions within one environment are
serially dependent)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lorafair.stats import metrics
from lorafair.tasks.lending.env import DEFAULT_NAMES

MIN_UNITS = 30  # environments below which a summary warns that its intervals rest on too few
FINAL = {  # summary name -> (per-env column, higher_is_better, unit)
    "approval_gap": ("approval_rate", None, "approval rate, group 0 minus group 1"),
    "tpr_gap": ("tpr", None, "true positive rate, group 0 minus group 1"),
    "mean_bin_gap": ("mean_bin", None, "mean credit bin, group 0 minus group 1"),
    "profit_gap": ("profit", None, "cumulative profit per environment, group 0 minus group 1"),
    "profit": ("profit_total", True, "cumulative profit per environment"),
}
PER_DECISION = {  # summary name -> (per-env column, higher_is_better, unit)
    "flip_rate": ("flip_rate", False, "share of decisions"),
    "mean_abs_delta_p": ("mean_abs_delta_p", False, "probability"),
}


def env_series(df: pd.DataFrame) -> pd.DataFrame:
    """Per (env, step, group) cumulative measures of one rollout frame (`env.rollout`).

    Columns: env, step, group, n, approved, pos, tp, approval_rate, tpr (NaN while a count is 0),
    mean_bin, profit; with the frame's optional per-decision ``flip``, ``abs_delta_p`` and
    ``decided`` (1 where the policy, not burn-in, decided), also the group's cumulative ``flips``,
    ``sum_abs_delta_p`` and ``sum_decided``; sorted by env, step, group. Equals
    the tests' independent per-step oracle of each environment's rows alone.
    """
    d = df.sort_values(["env", "step"], kind="stable")
    frames = []
    for g in (0, 1):
        ind = (d["group"].to_numpy() == g).astype(np.int64)
        act, rep = d["action"].to_numpy(np.int64), d["would_repay"].to_numpy(np.int64)
        inc = pd.DataFrame({"env": d["env"].to_numpy(), "n": ind, "approved": ind * act,
                            "pos": ind * rep, "tp": ind * rep * act,
                            "profit": ind * d["reward"].to_numpy(np.float64)})
        extra = [c for c in ("flip", "abs_delta_p", "decided") if c in d.columns]
        for c in extra:
            inc[c] = ind * d[c].to_numpy(np.float64)
        cum = inc.groupby("env", sort=False).cumsum()
        with np.errstate(invalid="ignore", divide="ignore"):
            frames.append(pd.DataFrame({
                "env": d["env"].to_numpy(np.int64), "step": d["step"].to_numpy(np.int64), "group": g,
                "n": cum["n"].to_numpy(), "approved": cum["approved"].to_numpy(),
                "pos": cum["pos"].to_numpy(), "tp": cum["tp"].to_numpy(),
                "approval_rate": np.where(cum["n"] > 0, cum["approved"] / cum["n"], np.nan),
                "tpr": np.where(cum["pos"] > 0, cum["tp"] / cum["pos"], np.nan),
                "mean_bin": d[f"mean_bin_{g}"].to_numpy(np.float64),
                "profit": cum["profit"].to_numpy(),
                **{f"{c}s" if c == "flip" else f"sum_{c}": cum[c].to_numpy() for c in extra},
            }))
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["env", "step", "group"], kind="stable").reset_index(drop=True)


def final_by_env(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (env_seed, env): each measure's final gap (group 0 minus 1), the total
    profit, each group's final values (``<measure>_<group>``) and, where the rows carry them, the
    environment's ``flip_rate`` (share of its decisions that change when only the group words are
    swapped) and ``mean_abs_delta_p``."""
    keys = ["env_seed", "env"]
    last = rows[rows["step"] == rows.groupby(keys)["step"].transform("max")]
    wide = last.pivot_table(index=keys, columns="group", dropna=False,
                            values=["approval_rate", "tpr", "mean_bin", "profit"], aggfunc="first")
    out = pd.DataFrame(index=wide.index)
    for m in ("approval_rate", "tpr", "mean_bin", "profit"):
        out[m] = wide[(m, 0)] - wide[(m, 1)]
        for g in (0, 1):
            out[f"{m}_{g}"] = wide[(m, g)]
    out["profit_total"] = wide[("profit", 0)] + wide[("profit", 1)]
    # flips are shares of the policy's own decisions (burn-in approvals are not its decisions)
    n = last.groupby(keys)["sum_decided" if "sum_decided" in last.columns else "n"].sum()
    for col, name in (("flips", "flip_rate"), ("sum_abs_delta_p", "mean_abs_delta_p")):
        if col in last.columns:
            out[name] = last.groupby(keys)[col].sum() / n
    return out.reset_index()


def pooled_timeseries(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (step, group) over every environment: rates from pooled
    counts, mean_bin and profit as means over environments."""
    g = rows.groupby(["step", "group"])
    s = g[["n", "approved", "pos", "tp"]].sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame({"n": s["n"], "approval_rate": s["approved"] / s["n"].where(s["n"] > 0),
                            "tpr": s["tp"] / s["pos"].where(s["pos"] > 0),
                            "mean_bin": g["mean_bin"].mean(), "profit": g["profit"].mean()})
    return out.reset_index()


def summarize(rows: pd.DataFrame, n_boot: int, names: tuple[str, str] | list[str] = DEFAULT_NAMES) -> dict:
    """Summary metrics of one policy: final gaps, profit and the flip rate, each with a bootstrap
    over environments (the independent units: decisions within one environment are serially
    dependent), each group's final values, and the pooled final gaps."""
    fin = final_by_env(rows)
    out: dict = {"metrics": {}, "groups": {}}
    for name, (col, hib, unit) in {**FINAL, **PER_DECISION}.items():
        if name in PER_DECISION and (col not in fin.columns or fin[col].isna().all()):
            continue  # no swapped decisions (or no probabilities) in these rows
        ci = metrics.bootstrap_ci(fin[col].to_numpy(np.float64), np.nanmean, n_boot, seed=0)
        out["metrics"][name] = metrics.record(ci["value"], ci["lo"], ci["hi"], higher_is_better=hib,
                                              unit=unit, n_envs=ci["n"], n_boot=ci["n_boot"])
    if len(fin) < MIN_UNITS:
        out["warnings"] = [f"{len(fin)} environments (n_envs × eval_seeds): every interval rests on "
                           f"them; use at least {MIN_UNITS}"]
    for g in (0, 1):
        out["groups"][names[g]] = {}
        for m in ("approval_rate", "tpr", "mean_bin", "profit"):
            ci = metrics.bootstrap_ci(fin[f"{m}_{g}"].to_numpy(np.float64), np.nanmean, n_boot, seed=0)
            out["groups"][names[g]][m] = metrics.record(ci["value"], ci["lo"], ci["hi"],
                                                      higher_is_better=None, unit=m, n_envs=ci["n"])
    ts = pooled_timeseries(rows)
    last = ts[ts["step"] == ts["step"].max()].set_index("group")
    out["pooled_final_gaps"] = {m: float(last.loc[0, m] - last.loc[1, m])
                                for m in ("approval_rate", "tpr", "mean_bin", "profit")}
    return out
