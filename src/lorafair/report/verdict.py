"""The verdict: sentences generated from the numbers and their 95% intervals, nothing else.

Rules:
- a difference from full fine-tuning is called significant only when its paired interval excludes
  zero; then the sentence says which arm is higher (and, when the metric records its direction,
  whether that is better or worse); otherwise it says "no significant difference";
- "within the full arm's interval" means the arm's (pooled) value lies in full fine-tuning's
  interval ``[lo, hi]``;
- fit check: an arm whose best validation loss exceeds the best arm's by more than
  ``FIT_TOLERANCE`` (relative, 5%) did not fit the data as well, so its differences from other arms
  may reflect training rather than rank or method;
- a number without a finite interval is stated as such, never compared.
"""

from __future__ import annotations

import math
from typing import Any

from lorafair.report.load import arm_rank, finite, is_record

FIT_TOLERANCE = 0.05

VARIANT_LABELS = {"lora": "LoRA", "rslora": "rsLoRA", "dora": "DoRA", "pissa": "PiSSA"}


def _decimals(*xs: Any) -> int:
    """Decimals for the largest finite magnitude among ``xs``: three, or two significant digits below 0.01."""
    mags = [abs(float(x)) for x in xs if finite(x) and x != 0]
    if not mags:
        return 3
    return int(min(6, max(3, 1 - math.floor(math.log10(max(mags))))))


def num(x: Any, signed: bool = False, decimals: int | None = None) -> str:
    """A number at ``decimals`` places (three significant digits by default); '+' on positive
    differences when ``signed``; zero is always "0"."""
    if not finite(x):
        return "n/a"
    x = float(x)
    d = _decimals(x) if decimals is None else decimals
    s = f"{x:.{d}f}"
    if float(s) == 0:
        return "0"
    return f"+{s}" if signed and x > 0 else s


def value_ci(rec: dict, signed: bool = False, label: str = "95% CI ") -> str:
    """``"0.120 (95% CI 0.090–0.150)"``, the three numbers at one precision; bounds below zero are
    joined by "to" so a minus sign is never read as a dash."""
    v, lo, hi = rec.get("value"), rec.get("lo"), rec.get("hi")
    d = _decimals(v, lo, hi)
    if not (finite(lo) and finite(hi)):
        return f"{num(v, signed, d)} (no interval)"
    sep = " to " if min(lo, hi) < 0 else "–"
    return f"{num(v, signed, d)} ({label}{num(lo, signed, d)}{sep}{num(hi, signed, d)})"


def _cap(text: str) -> str:
    """Sentence start for an arm label; method names keep their own case (rsLoRA)."""
    return text[:1].upper() + text[1:] if text.startswith(("the ", "full ")) else text


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def arm_label(arm: str) -> str:
    """``lora-r8`` → "LoRA r=8"; ``full`` → "full fine-tuning"; ``base`` → "the base model"."""
    if arm == "full":
        return "full fine-tuning"
    if arm == "base":
        return "the base model"
    variant, rank = arm_rank(arm)
    if rank is None:
        return arm
    return f"{VARIANT_LABELS.get(variant, variant)} r={rank}"


def metric_label(name: str) -> str:
    return name.replace("_", " ")


def significance(diff: dict) -> str | None:
    """"higher" / "lower" when the interval excludes 0, "none" when it covers 0, None if undefined."""
    lo, hi = diff.get("lo"), diff.get("hi")
    if not (finite(lo) and finite(hi)):
        return None
    if lo > 0:
        return "higher"
    if hi < 0:
        return "lower"
    return "none"


def diff_sentence(arm: str, metric: str, diff: dict, arm_rec: dict | None = None,
                  full_rec: dict | None = None, seed: int | None = None) -> str:
    """One arm against full fine-tuning on one metric, with the paired difference (arm − full)."""
    who = _cap(arm_label(arm)) + (f" (seed {seed})" if seed is not None else "")
    m = metric_label(metric)
    if is_record(arm_rec) and is_record(full_rec):
        head = (f"{who} leaves {_article(m)} {m} of {value_ci(arm_rec)} against "
                f"{value_ci(full_rec, label='')} for full fine-tuning; ")
    else:
        head = f"{who} minus full fine-tuning on {m}: "
    body = "difference " + value_ci(diff, signed=True, label="CI ")
    sig = significance(diff)
    if sig is None:
        return head + body + ": the interval is undefined, so no comparison is made."
    if sig == "none":
        return head + body + ": no significant difference."
    hib = diff.get("higher_is_better")
    if hib is None and is_record(arm_rec):
        hib = arm_rec.get("higher_is_better")
    tail = f"{sig} than full fine-tuning"
    if hib is not None:
        tail += " (better)" if (sig == "higher") == bool(hib) else " (worse)"
    return head + body + f": {tail}."


def vs_full_sentences(vs_full: dict, evals: dict[tuple[str, int], dict], pooled: dict | None = None,
                      order: Any = None) -> list[str]:
    """Sentences for every entry of compare.json's arm-minus-full differences.

    vs_full: ``"arm@seed"`` (one training seed) or ``"arm"`` (seeds pooled) -> metric -> record.
    evals: (arm, seed) -> evaluation summary, whose "metrics" give each side's own record for a
    per-seed entry; pooled: arm -> metric -> record, the sides of a pooled entry.
    """
    out = []
    keys = sorted(vs_full, key=lambda k: (order(k.partition("@")[0]) if order else k, k))
    multi = len({k.partition("@")[2] for k in vs_full}) > 1
    for key in keys:
        arm, _, s = key.partition("@")
        seed = int(s) if s.lstrip("-").isdigit() else None
        if seed is None:
            own, full = (pooled or {}).get(arm) or {}, (pooled or {}).get("full") or {}
        else:
            own = (evals.get((arm, seed)) or {}).get("metrics") or {}
            full = (evals.get(("full", seed)) or {}).get("metrics") or {}
        for metric, diff in (vs_full.get(key) or {}).items():
            if is_record(diff):
                out.append(diff_sentence(arm, metric, diff, own.get(metric), full.get(metric),
                                         seed if multi else None))
    return out


def within(rec: dict, ref: dict) -> bool | None:
    """Is ``rec``'s value inside ``ref``'s interval? None when either number is missing."""
    if not (is_record(rec) and is_record(ref) and finite(ref.get("lo")) and finite(ref.get("hi"))):
        return None
    return ref["lo"] <= rec["value"] <= ref["hi"]


def smallest_sufficient_rank(pooled: dict[str, dict[str, dict]], metrics: list[str]) -> dict[str, int | None]:
    """Per LoRA variant, the smallest rank whose value is within full's interval on every metric.

    pooled: arm -> metric -> record (must contain "full"). Metrics full has no interval for are
    skipped; a variant is listed only when it has at least one ranked arm.
    """
    full = pooled.get("full") or {}
    usable = [m for m in metrics if within(full.get(m, {}), full.get(m, {})) is not None]  # has an interval
    out: dict[str, int | None] = {}
    ranked = sorted(((arm_rank(a), a) for a in pooled if arm_rank(a)[1] is not None), key=lambda t: t[0][1])
    for (variant, rank), arm in ranked:
        out.setdefault(variant, None)
        if out[variant] is None and usable and all(within(pooled[arm].get(m, {}), full[m]) for m in usable):
            out[variant] = rank
    return out


def rank_sentence(pooled: dict[str, dict[str, dict]], metrics: list[str]) -> str | None:
    if "full" not in pooled:
        return None
    found = smallest_sufficient_rank(pooled, metrics)
    if not found:
        return None
    parts = []
    for variant, rank in found.items():
        text = f"r = {rank}" if rank is not None else "none"
        parts.append(text + (f" ({VARIANT_LABELS.get(variant, variant)})" if len(found) > 1 else ""))
    return ("Smallest rank within the full arm's interval on every headline metric: "
            + "; ".join(parts) + ".")


def fit_warnings(best_val: dict[str, float], tolerance: float = FIT_TOLERANCE) -> list[str]:
    """Arms whose best validation loss is more than ``tolerance`` (relative) above the best arm's."""
    vals = {a: v for a, v in best_val.items() if finite(v)}
    if len(vals) < 2:
        return []
    best_arm = min(vals, key=vals.get)
    best = vals[best_arm]
    out = []
    for arm, v in vals.items():
        rel = (v - best) / abs(best) if best != 0 else math.inf
        if arm != best_arm and rel > tolerance:
            what = "rank" if arm_rank(arm)[1] is not None else "the method"
            out.append(f"Fit check: {arm_label(arm)} reached a best validation loss of {num(v)}, "
                       f"{100 * rel:.0f}% above the best arm ({arm_label(best_arm)}, {num(best)}); "
                       f"its differences may reflect training rather than {what}.")
    return out


def failure_sentences(failed: dict[tuple[str, int], dict]) -> list[str]:
    out = []
    for (arm, seed), info in sorted(failed.items()):
        step, lr = info.get("step"), info.get("lr")
        out.append(f"{_cap(arm_label(arm))} (seed {seed}) diverged"
                   + (f" at step {step}" if step is not None else "")
                   + (f" with learning rate {lr:g}" if finite(lr) else "")
                   + "; it has no results.")
    return out


def shift_sentences(kl: dict | None) -> list[str]:
    """Shift captured per arm with its interval (from the KL analysis)."""
    out = []
    for arm, e in (kl or {}).items():
        sc = e.get("shift_captured") if isinstance(e, dict) else None
        if arm in ("base", "full") or not is_record(sc):
            continue
        out.append(f"{_cap(arm_label(arm))}: shift captured {value_ci(sc)}, where 1 − KL(full‖arm) / "
                   "KL(full‖base) is 1 for an arm as close to full fine-tuning as full itself and 0 for one "
                   "no closer than base.")
    return out


def verdict(vs_full: dict, evals: dict, pooled: dict, metrics: list[str], best_val: dict,
            failed: dict | None = None, kl: dict | None = None, order: Any = None) -> list[str]:
    """All verdict sentences in reading order."""
    out = vs_full_sentences(vs_full or {}, evals, pooled, order)
    r = rank_sentence(pooled, metrics)
    if r:
        out.append(r)
    out += shift_sentences(kl)
    out += fit_warnings(best_val)
    out += failure_sentences(failed or {})
    return out
