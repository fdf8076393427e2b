"""Shared fixtures: a tiny study (random 2-layer model, a small JSONL corpus), YAML writers, a CLI runner.

Torch runs single-threaded in tests: the models are tiny, and on a busy machine several OpenMP
threads spinning against each other make small matrix products a thousand times slower.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

CORPUS = [
    {"prompt": f"Note {i}: the neighbours said that", "completion": f" they liked the garden and the {w} very much."}
    for i, w in enumerate(["roses", "trees", "bench", "pond", "path", "gate", "birds", "grass",
                           "fence", "tulips", "shade", "herbs", "lawn", "ivy", "moss", "stones"])
] + [
    {"prompt": f"Question {i}: what did the visitor bring?", "completion": f" A basket of {f} for everyone."}
    for i, f in enumerate(["apples", "pears", "plums", "bread", "cheese", "figs", "nuts", "grapes"])
]


def tiny_study_dict(out: Path, corpus: Path, **sections) -> dict:
    """A study on the tiny random model that trains in a second or two. `sections` replace or
    update the top-level sections (dicts are merged one level deep)."""
    d = {
        "name": "tiny",
        "model": {"source": "tiny-random", "precision": "float32"},
        "task": {"name": "toxicity"},
        "data": {"corpus": "jsonl", "path": str(corpus), "val_fraction": 0.2, "heldout_fraction": 0.1},
        "training": {"max_steps": 4, "batch_size": 4, "max_length": 32, "eval_every": 2, "checkpoint_every": 2,
                     "lr_search": {"enabled": False}},
        "evaluation": {"samples": 1, "n_prompts": 2, "max_new_tokens": 3, "bootstrap": 20, "batch_size": 8},
        "analyses": {"kl": False, "lens": False, "weights": False},
        "arms": ["base", "full", {"type": "lora", "rank": 2}],
        "seeds": [0],
        "output": str(out),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **copy.deepcopy(value)}
        else:
            d[key] = copy.deepcopy(value)
    return d


def write_corpus(path: Path, rows: list[dict] = CORPUS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_yaml(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl")


@pytest.fixture
def tiny_study(tmp_path, corpus_file):
    """Factory: tiny_study(**sections) -> study dict with output under tmp_path/run."""

    def make(**sections) -> dict:
        return tiny_study_dict(tmp_path / "run", corpus_file, **sections)

    return make


@pytest.fixture
def study_file(tmp_path, tiny_study):
    """Factory: study_file(**sections) -> path of a YAML study in tmp_path."""

    def make(name: str = "study.yaml", **sections) -> Path:
        return write_yaml(tmp_path / name, tiny_study(**sections))

    return make


@pytest.fixture(scope="session")
def tok():
    """The tiny random model's tokenizer, loaded once per test session and shared: a test that
    changes its settings (padding side) works on ``copy.copy(tok)``."""
    from lorafair.models import sources as models

    return models.load_tokenizer("tiny-random")


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def offline(monkeypatch):
    """The hub unreachable and known to be (HF_HUB_OFFLINE): answered at once, without retries."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray cluster on this machine, started once per test session: two CPUs, two declared GPUs
    (Ray sets CUDA_VISIBLE_DEVICES for a task that asks for one; nothing here touches CUDA), no
    dashboard, a small object store. Workers at normal priority (Ray's default niceness 15 starves
    them whenever anything else runs on the machine)."""
    import ray  # the ray extra; make test installs it

    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _precision_session():
    """The process-wide run precision (set by every Context) and torch's thread count restored after
    each test, so no test leaves a later one computing in bf16 or on other threads."""
    from lorafair.models import precision

    before = precision.session()
    yield
    precision.set_session(before)
    torch.set_num_threads(1)  # a benchmark run in-process sets its own thread count
