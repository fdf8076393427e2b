"""The fit gate: whether a trained arm fitted its fine-tuning data well enough for its differences
from full fine-tuning to say something about rank or method rather than about training.

An arm is *fitted* when all three hold:

1. **interior learning rate**: its learning-rate search ended at an interior optimum (the search
   extends the grid beyond an edge holding the best candidate up to ``training.lr_search.
   max_extensions`` times, default 2; an optimum still at the edge after that fails the gate; an arm
   whose rate was fixed by hand is not checked);
2. **validation loss**: its best validation loss (mean over seeds) is at most full fine-tuning's plus
   ``LOSS_TOLERANCE`` (default 0.10) of the distance from the base model's loss to full's:
   (L_arm − L_full) / (L_base − L_full) ≤ 0.10. L_base is the loss of the first training step, taken
   before any update, so it is the base model's loss on a training batch. The check needs a
   fine-tuning effect to measure against: it applies only when full fine-tuning lowered the loss by at
   least ``MIN_EFFECT`` (10%) of L_base;
3. **competence**: the task's own check passes (``Task.competence``: the lending policy is not
   constant after burn-in; a classifier's balanced accuracy beats the majority class's 0.5).

An arm that fails gets "no verdict: did not fit (<reasons>)" for every metric. Independently, an arm
whose best validation step was its last one, or whose early stopping never stopped, is flagged
"may be under-trained" (a note, not a failure); and the seeds that fail the task's check on their
own (``Task.seed_competence``: say a lending policy that approves everyone) are named beside the
arm's verdict with full fine-tuning's count for comparison (a note too: such seeds are part of what
the arm's training does, and they stay in its pooled results). Pure functions of the records the run
stores.
"""

from __future__ import annotations

import math

LOSS_TOLERANCE = 0.10
MIN_EFFECT = 0.10


def _mean(xs: list[float]) -> float | None:
    xs = [float(x) for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def base_loss(first_losses: list[float]) -> float | None:
    """The base model's training loss: the mean of first-step losses (before any update)."""
    return _mean(first_losses)


def fit_gate(search: dict | None, done: list[dict], full_done: list[dict], loss_base: float | None,
             competence: str | None = None, tolerance: float = LOSS_TOLERANCE,
             patience: int | None = None, seed_failures: dict[int, str] | None = None,
             full_failures: tuple[int, int] | None = None) -> dict:
    """The gate for one arm (module docstring).

    search: the arm's ``lr_search/<arm>.json`` (None: the rate was set by hand); done: its
    ``done.json`` per seed; full_done: full fine-tuning's; loss_base: :func:`base_loss`;
    competence: None when the task's check passes, else why it failed; patience: the study's
    ``early_stopping_patience``; seed_failures: seed -> why it failed the task's check alone;
    full_failures: (failed, seeds) of full fine-tuning. Returns ``{fitted, reasons, under_trained,
    seeds_failing, val_loss, full_val_loss, base_loss, loss_share}`` (``seeds_failing``: the note on
    the failing seeds, or None); ``loss_share`` = (L_arm − L_full) / (L_base − L_full)."""
    reasons: list[str] = []
    if isinstance(search, dict) and search.get("interior") is False:
        n = len(search.get("extensions") or [])
        reasons.append(f"learning-rate search ended at the grid edge ({search.get('chosen', float('nan')):g}) "
                       f"after {n} extension{'s' if n != 1 else ''}")
    lv, lf = _mean([d.get("best_val_loss") for d in done]), _mean([d.get("best_val_loss") for d in full_done])
    share = None
    if lv is not None and lf is not None and loss_base is not None and loss_base - lf >= MIN_EFFECT * abs(loss_base):
        share = (lv - lf) / (loss_base - lf)
        if share > tolerance:
            reasons.append(f"validation loss {lv:.3g} against full's {lf:.3g}, {100 * share:.0f}% of the "
                           f"base-to-full distance (tolerance {100 * tolerance:.0f}%)")
    if competence:
        reasons.append(competence)
    notes = []
    last = sum(1 for d in done if d.get("best_step") is not None and d.get("best_step") == d.get("steps"))
    if last:
        notes.append(f"best validation step at the last step in {last} of {len(done)} seeds")
    if patience and done and not any(d.get("stopped_early") for d in done):
        notes.append("early stopping never stopped")
    return {"fitted": not reasons, "reasons": reasons,
            "under_trained": ("may be under-trained: " + "; ".join(notes)) if notes else None,
            "seeds_failing": failing_seeds(seed_failures, len(done), full_failures),
            "val_loss": lv, "full_val_loss": lf, "base_loss": loss_base, "loss_share": share}


def failing_seeds(failures: dict[int, str] | None, n_seeds: int, full: tuple[int, int] | None) -> str | None:
    """The note on an arm's seeds that failed the task's check alone, e.g. "a constant policy in
    seeds 0, 1 (2 of 8 seeds; full fine-tuning: 1 of 8)"; None when none failed."""
    if not failures:
        return None
    why = "; ".join(sorted(set(failures.values())))
    seeds = ", ".join(str(s) for s in sorted(failures))
    ref = f"; full fine-tuning: {full[0]} of {full[1]}" if full else ""
    return f"{why} in seed{'s' if len(failures) > 1 else ''} {seeds} ({len(failures)} of {n_seeds} seeds{ref})"
