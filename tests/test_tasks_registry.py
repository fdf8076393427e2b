"""The task registry: lorafair's task folders and other packages' entry points, listed by `lorafair tasks`."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from lorafair import tasks
from lorafair.cli import app
from lorafair.errors import UserError

PLUGIN = '''
from dataclasses import dataclass

from lorafair.study.schema import key
from lorafair.tasks import Task, register


@dataclass
class Opts:
    depth: int = key(3, ">= 1")


@register("plugin-echo")
class Echo(Task):
    """A task of another package."""
    Options = Opts

    def build_corpus(self, ctx):
        return []

    def evaluate(self, ctx, model, arm):
        raise NotImplementedError

    def evaluation_items(self, study):
        return []

    def finetune_items(self, study):
        return []
'''


def test_every_task_folder_is_registered():
    assert {"toxicity", "classification", "lending"} <= set(tasks.discover())
    with pytest.raises(UserError, match="unknown task 'nope'; valid: classification"):
        tasks.get_task("nope")


def test_report_hook_found_by_task_name():
    assert callable(tasks.report_hook("lending"))
    assert tasks.report_hook("toxicity") is None and tasks.report_hook("probes") is None


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "lorafair_plugin_echo.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="plugin-echo", value="lorafair_plugin_echo", group=tasks.ENTRY_POINTS)
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [ep] if kw.get("group") == tasks.ENTRY_POINTS else real(**kw))
    yield "plugin-echo"
    tasks.TASKS.pop("plugin-echo", None)
    sys.modules.pop("lorafair_plugin_echo", None)


def test_another_package_adds_a_task_through_the_entry_point_group(plugin, cli):
    assert tasks.get_task(plugin).__name__ == "Echo"
    result = cli.invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    assert "plugin-echo: A task of another package." in result.output
    assert "task.options.depth" in result.output and ">= 1" in result.output
    assert "lending:" in result.output and "data.n_examples" in result.output


def test_options_table_lists_defaults_and_accepted_values():
    rows = {k: (d, a) for k, d, a in tasks.options_table(tasks.get_task("toxicity"))}
    assert rows["data.corpus"] == ("'self-detox'", "one of self-detox, counterfactual, jsonl")
    assert rows["data.val_fraction"][1] == "in [0, 1)"
