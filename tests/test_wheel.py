"""The shipped studies install with the package: a wheel built from this tree, installed into an empty
folder, validates the packaged demo by name from a directory that holds no `studies/` folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_studies_and_validates_the_demo(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("lorafair-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "src/lorafair/studies").glob("*.yaml"))
    assert shipped and all(f"lorafair/studies/{n}" in names for n in shipped)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import lorafair; print(lorafair.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(target))  # the installed copy, not this tree
    out = subprocess.run([sys.executable, "-m", "lorafair", "validate", "demo"], cwd=elsewhere, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("demo: valid; task toxicity")
    missing = subprocess.run([sys.executable, "-m", "lorafair", "validate", "no-such-study"], cwd=elsewhere,
                             env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "demo" in missing.stdout + missing.stderr
