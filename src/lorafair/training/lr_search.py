"""The learning-rate search: the same procedure for every arm.

* Grids. Every arm type searches a log grid of the same size (``training.lr_search.full`` and
  ``.lora``, checked by `check_grids`). A LoRA arm's grid is the same at every rank: with the
  default alpha = 2r its update is scaled by alpha / r = 2 at every rank. An rsLoRA arm scales its
  update by alpha / sqrt(r), sqrt(r) times plain LoRA's at the same alpha and rank, so its grid is
  the LoRA grid divided by sqrt(r): with Adam the first steps move each adapter weight by about the
  learning rate whatever the gradient's scale, so the update of the weight matrix grows with
  scaling x rate, and dividing the rate by sqrt(r) gives the same update size as plain LoRA.
* Candidates. Each candidate trains on the first ``steps`` steps of the final run's schedule (the
  same warm-up and decay, the same seed and example order the chosen rate will get), and is ranked by
  the validation loss at the end of that prefix. The prefix of the chosen rate is exactly the start
  of its final run.
* Bracketing. When the best candidate is the lowest or the highest rate tried, the grid is extended
  one grid step beyond that edge, again and again, until the best is interior or
  ``max_extensions`` extensions were made; the record says which. A rate that diverges is a valid
  edge: the best finite rate below it is interior.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from lorafair.arms import kinds
from lorafair.errors import UserError

GRID_TOLERANCE = 1.15  # each grid step may differ from the grid's mean factor by this factor (1e-5, 3e-5, 1e-4)


def grid_factor(grid: Sequence[float]) -> float:
    """The mean factor between neighbours of an increasing log grid, [n >= 2] -> float."""
    return (grid[-1] / grid[0]) ** (1.0 / (len(grid) - 1))


def check_grids(full: Sequence[float], lora: Sequence[float], where: str) -> None:
    """Both grids: the same number (>= 3) of increasing positive rates, evenly spaced in log."""
    for key, grid in (("full", full), ("lora", lora)):
        if any(lr <= 0 for lr in grid):
            raise UserError(f"{where}.{key}: learning rate must be > 0, got {list(grid)}")
    if len(full) != len(lora):
        raise UserError(f"{where}: full has {len(full)} candidates and lora {len(lora)}; give every arm "
                        "type the same number of candidates")
    for key, grid in (("full", full), ("lora", lora)):
        if len(grid) < 3:
            raise UserError(f"{where}.{key}: {len(grid)} candidates; give at least 3 so that the best "
                            "can be interior")
        steps = [b / a for a, b in zip(grid, grid[1:])]
        f = grid_factor(grid)
        if any(s <= 1 for s in steps) or any(abs(math.log(s / f)) > math.log(GRID_TOLERANCE) for s in steps):
            raise UserError(f"{where}.{key}: {list(grid)} is not an increasing log grid (each rate about "
                            f"the same factor above the last, e.g. 1e-4, 3e-4, 1e-3)")


def lr_grid(arm, search) -> list[float]:
    """The grid searched for an arm (rules in the module docstring)."""
    return kinds.lr_grid(arm, search.full, search.lora)


def bracket(grid: Sequence[float], run: Callable[[float], float | None], max_extensions: int,
            log: Callable[[str], None] = lambda m: None) -> dict:
    """Evaluate every rate of ``grid`` with ``run`` (validation loss, or None when it diverged),
    then extend past the best's edge until it is interior or ``max_extensions`` are spent.

    Returns {candidates: [{lr, val_loss}] in the order run, chosen, interior, extensions:
    [{lr, edge}], factor}; raises UserError when every rate diverged.
    """
    factor = grid_factor(grid)
    rows = [{"lr": lr, "val_loss": run(lr)} for lr in grid]
    extensions: list[dict] = []
    while True:
        ordered = sorted(rows, key=lambda r: r["lr"])
        finite = [r for r in ordered if r["val_loss"] is not None]
        if not finite:
            raise UserError("every learning rate of the search diverged; lower training.lr_search values")
        best = min(finite, key=lambda r: r["val_loss"])
        edge = "low" if best is ordered[0] else "high" if best is ordered[-1] else None
        if edge is None or len(extensions) >= max_extensions:
            break
        lr = best["lr"] / factor if edge == "low" else best["lr"] * factor
        log(f"best rate {best['lr']:g} is at the {edge} edge of the grid; trying {lr:g}")
        extensions.append({"lr": lr, "edge": edge})
        rows.append({"lr": lr, "val_loss": run(lr)})
    return {"candidates": rows, "chosen": best["lr"], "interior": edge is None, "extensions": extensions,
            "factor": factor}
