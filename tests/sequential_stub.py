"""A scorer for the end-to-end test of ``run --until-decided`` on the tiny random model.

The tiny model's continuations are random tokens, so a real classifier scores them all near zero
and every arm looks the same. Importing this module registers the scorer ``stub-hash``: a
continuation's score is a fixed pseudo-random number in [0, 0.5) from a hash of its text (arms
whose continuations differ get independent scores with the same distribution: a true difference of
0), plus 0.45 for the arm named in ``WORSE`` (clearly worse than full). Training, evaluation,
comparison and the plan are lorafair's own. Run as ``python tests/sequential_stub.py ARGS``, it is
the ``lorafair`` command with the scorer registered (for the kill-and-resume test).
"""

from __future__ import annotations

import hashlib

import numpy as np

import lorafair.scorers as scorers
from lorafair.scorers.base import Scorer
from lorafair.tasks.toxicity import task as toxicity

WORSE = "lora-r1"
SHIFT = 0.45


class HashScorer(Scorer):
    name, version, weights_hash, labels, primary = "stub-hash", "1", "none", ["toxic"], "toxic"
    arm: str | None = None

    def _score(self, texts: list[str]) -> dict[str, np.ndarray]:
        u = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) / 16**8 for t in texts]
        shift = SHIFT if HashScorer.arm == WORSE else 0.0
        return {"toxic": 0.5 * np.asarray(u) + shift}


_evaluate = toxicity.Toxicity.evaluate


def _evaluate_knowing_the_arm(self, ctx, model, arm, generated=None):
    HashScorer.arm = arm
    try:
        return _evaluate(self, ctx, model, arm, generated)
    finally:
        HashScorer.arm = None


scorers._REGISTRY["stub-hash"] = lambda _arg: HashScorer()
toxicity.Toxicity.evaluate = _evaluate_knowing_the_arm

if __name__ == "__main__":
    from lorafair.cli import app

    app(prog_name="lorafair")
