"""The result contract: what every task's ``evaluate`` and ``compare`` return, and the only shapes
the report and the console read.

A *record* is one number with its interval::

    {"value": float, "lo": float, "hi": float, "higher_is_better": bool | None, "unit": str, ...}

(an undefined number is NaN in memory and null once written).

- :class:`EvalResult` — one arm and seed: headline ``metrics`` (name -> record), per-group records in
  one shape (``groups``: group -> measure -> record; with several protected attributes a group is
  named ``"<attribute>: <group>"``), group ``gaps`` (measure -> record with ``raw_gap``,
  ``null_gap``, ``p_value``, ``max_group``, ``min_group``), ``warnings``, task-specific ``extras``
  and the per-item ``rows``. Written to ``<arm>/seed-<s>/eval/<task>.json`` by :meth:`summary`.
- :class:`CompareResult` — all arms: ``pooled`` (arm -> metric -> record, seeds pooled; plus
  ``n_seeds``), ``minus_full`` (arm -> metric -> paired difference record) and ``extras``; the
  runner adds the margins and the equivalence decisions and writes ``compare.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

RECORD_KEYS = ("value", "lo", "hi")


def is_record(x: Any) -> bool:
    """Whether ``x`` is a record (a dict whose ``value`` is a number)."""
    return isinstance(x, dict) and isinstance(x.get("value"), (int, float))


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _number_or_none(x: Any) -> bool:
    """A record's number: NaN while undefined in memory, None once written (strict JSON)."""
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _check_records(where: str, table: dict, counts_allowed: bool = False) -> None:
    """Every entry a record; with ``counts_allowed`` plain numbers (a group's count, ``n_seeds``) pass."""
    for name, r in table.items():
        if counts_allowed and isinstance(r, (int, float)):
            continue
        if not (isinstance(r, dict) and all(k in r and _number_or_none(r[k]) for k in RECORD_KEYS)):
            raise ValueError(f"{where}[{name!r}] is not a record with value, lo and hi: {r!r}")


def upgrade_summary(summary: dict) -> dict:
    """An evaluation summary written before this contract, in the contract's shape: groups that were
    nested under ``groups.groups`` (with ``groups.gap``) or under ``by_group.<attribute>`` (with
    ``gaps.<attribute>``) become ``groups`` and ``gaps``; a summary already in shape is returned as is.
    Evaluations are reused while their settings are unchanged, so a run folder may hold both."""
    s = dict(summary)
    g = s.get("groups")
    if isinstance(g, dict) and isinstance(g.get("groups"), dict) and not is_record(g.get("groups")):
        s["groups"] = g["groups"]
        s["gaps"] = g.get("gap") or {}
        s.setdefault("small_groups", g.get("small_groups") or {})
    if isinstance(s.get("by_group"), dict):
        s["groups"] = {f"{a}: {grp}": ms for a, gs in s.pop("by_group").items() for grp, ms in gs.items()}
        gaps = s.get("gaps") or {}
        if any(isinstance(v, dict) and not is_record(v) for v in gaps.values()):
            s["gaps"] = {f"{k}_{a}": r for a, per in gaps.items() for k, r in (per or {}).items()}
    s.setdefault("groups", {})
    s.setdefault("gaps", {})
    s.setdefault("warnings", [])
    return s


@dataclass
class EvalResult:
    """One arm and seed evaluated (module docstring)."""

    metrics: dict[str, dict]
    rows: pd.DataFrame
    groups: dict[str, dict[str, dict]] = field(default_factory=dict)
    gaps: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def check(self) -> "EvalResult":
        """Raise ValueError (a bug in the task) unless every entry has the contract's shape."""
        _check_records("metrics", self.metrics)
        for g, ms in self.groups.items():
            _check_records(f"groups[{g!r}]", ms, counts_allowed=True)
        _check_records("gaps", self.gaps)
        clash = set(self.extras) & {"metrics", "groups", "gaps", "warnings"}
        if clash:
            raise ValueError(f"extras may not use the contract's keys {sorted(clash)}")
        return self

    def summary(self) -> dict:
        """The JSON-ready summary: the contract's keys, then the extras."""
        return {"metrics": self.metrics, "groups": self.groups, "gaps": self.gaps, "warnings": self.warnings,
                **self.extras}


@dataclass
class CompareResult:
    """All arms compared (module docstring)."""

    pooled: dict[str, dict[str, Any]]
    minus_full: dict[str, dict[str, dict]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def check(self) -> "CompareResult":
        """Raise ValueError (a bug in the task) unless every entry has the contract's shape."""
        for arm, ms in self.pooled.items():
            _check_records(f"pooled[{arm!r}]", ms, counts_allowed=True)
        for arm, ms in self.minus_full.items():
            _check_records(f"minus_full[{arm!r}]", ms)
        return self

    def to_json(self, margins: dict[str, float], decisions: dict[str, dict[str, dict]]) -> dict:
        """What ``compare.json`` holds: the comparison, the margins and the decisions."""
        return {"pooled": self.pooled, "minus_full": self.minus_full, **self.extras, "margins": margins,
                "decisions": decisions}
