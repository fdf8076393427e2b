"""Every benchmark imports and runs at a tiny size on the tiny random model (LORAFAIR_BENCH_TINY=1,
workers in this process), so that a renamed or moved name fails here rather than in the next full
benchmark run. The figures of a tiny run measure nothing; only that it runs and reports is checked."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SRC = Path(__file__).resolve().parents[1] / "src"


def _registered() -> dict[str, str]:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("_bench_run", BENCH / "run.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return dict(mod.BENCHES)
    finally:
        sys.path.remove(str(BENCH))


BENCHES = _registered()


def test_every_benchmark_module_is_registered():
    files = {p.stem for p in BENCH.glob("bench_*.py")}
    assert files == set(BENCHES.values()) | {"bench_gpu"}, "register new benchmarks in benchmarks/run.py BENCHES"


@pytest.fixture
def tiny_benchmarks(monkeypatch):
    """The benchmarks folder importable, its modules fresh, and the tiny size switched on."""
    monkeypatch.setenv("LORAFAIR_BENCH_TINY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(str(BENCH))
    for name in [n for n in sys.modules if _ours(n)]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [n for n in sys.modules if _ours(n)]:
        sys.modules.pop(name, None)


def _ours(module: str) -> bool:
    return module in ("common", "profile_together") or module.startswith(("bench_", "_bench_"))


def _in_own_process(code: str) -> dict:
    """Run `code` (which prints one JSON line last) in a fresh interpreter at the tiny size: a
    benchmark sets threads, patches and caches of its own, none of which may reach later tests."""
    import subprocess

    env = {**os.environ, "LORAFAIR_BENCH_TINY": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), str(BENCH), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], cwd=BENCH, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_benchmark_runs_tiny(name):
    res = _in_own_process(
        "import importlib, json, common\n"
        "assert common.TINY and common.MODEL == 'tiny-random'\n"
        f"res = importlib.import_module({BENCHES[name]!r}).run(True)\n"
        "print(json.dumps({'keys': sorted(res), 'res': res}))")  # run.py writes it as JSON
    assert "met" in res["keys"] and "target" in res["keys"]


def test_together_profile_runs_tiny():
    out = _in_own_process("import json, profile_together\nprint(json.dumps(profile_together.main()))")
    assert out["rows_together"] == 24 and out["together_step_s"] > 0


def test_gpu_check_script_imports(tiny_benchmarks):
    """The GPU check cannot run here; it must at least import and refuse cleanly without CUDA."""
    import torch

    mod = importlib.import_module("bench_gpu")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run benchmarks/bench_gpu.py itself")
    with pytest.raises(SystemExit, match="CUDA"):
        mod.main([])
