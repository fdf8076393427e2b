"""Every registered task, end to end on the tiny random model: its results keep the contract
(`lorafair.stats.results`), the console shows each headline metric's arm − full column, the report builds.

A task added to the registry without an entry in ``TINY`` fails here: say how to run it small."""

from __future__ import annotations

import pytest
from rich.console import Console

from conftest import tiny_study_dict, write_corpus
from lorafair.stats import equivalence
from lorafair import tasks
from lorafair.study.config import study_from_dict
from lorafair.stats.results import CompareResult, EvalResult, is_record
from lorafair.study.runner import Runner
from lorafair.store.rundir import RunDir, read_json
from lorafair.report.summary import print_summary

TINY = {  # task -> the study sections that make it small (on top of conftest.tiny_study_dict)
    "toxicity": {},
    "classification": {"task": {"name": "classification", "options": {"dataset": "german"}},
                       "data": {"n_train": 20, "n_val": 4, "n_test": 24},
                       "training": {"max_length": 112},
                       "evaluation": {"bootstrap": 20, "batch_size": 8, "min_group_size": 3}},
    "lending": {"task": {"name": "lending", "options": {"T": 6, "n_envs": 3, "eval_seeds": [0],
                                                        "env": {"burnin": 2}}},
                "data": {"n_examples": 16}, "training": {"max_length": 40},
                "evaluation": {"bootstrap": 20, "batch_size": 8}},
}


def test_every_registered_task_has_a_tiny_study():
    assert set(tasks.discover()) <= set(TINY), "add the task to TINY"


@pytest.mark.parametrize("name", sorted(TINY))
def test_task_keeps_the_result_contract(name, tmp_path):
    d = tiny_study_dict(tmp_path / "run", write_corpus(tmp_path / "corpus.jsonl"), **TINY[name])
    if name != "toxicity":
        d["data"] = TINY[name]["data"]
    runner = Runner(study_from_dict(d), log=lambda m: None)
    runner.run(analyses=False, report=True)
    rd = RunDir(runner.rd.path)

    evals = rd.evals(name)
    assert set(evals) == {("base", 0), ("full", 0), ("lora-r2", 0)}
    for s in evals.values():  # the summary as written reads back into the contract's shape
        EvalResult(metrics=s["metrics"], rows=None, groups=s["groups"], gaps=s["gaps"], warnings=s["warnings"],
                   ).check()
        assert s["metrics"] and all(isinstance(w, str) for w in s["warnings"])
    cmp = read_json(rd.compare_path())
    CompareResult(pooled=cmp["pooled"], minus_full=cmp["minus_full"]).check()
    headline = list(evals[("full", 0)]["metrics"])
    assert set(cmp["minus_full"]) == {"base", "lora-r2"}
    for arm in ("base", "lora-r2"):
        for m in headline:
            if is_record(cmp["minus_full"][arm].get(m)):
                assert equivalence.base_word(cmp["decisions"][arm][m]["decision"]) in equivalence.DECISIONS

    console = Console(width=120, record=True)
    print_summary(rd.path, console)
    text = console.export_text()
    decided = [m for m in headline if (cmp["decisions"].get("lora-r2", {}).get(m) or {}).get("value") is not None]
    assert decided
    for m in decided:
        table = text.split(f"\n{m} (", 1)[1]
        row = next(line for line in table.splitlines() if line.startswith("│ lora-r2"))
        assert row.count("│") == 5 and "│ - " not in row.split("│")[3], (m, row)  # arm − full filled in
    assert (rd.report_dir() / "report.html").is_file()
