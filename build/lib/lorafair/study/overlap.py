"""Disjoint evaluation: no evaluation item may occur in the data a study fine-tunes on.

A task names what it evaluates and what its fine-tuning corpus is built from (train, validation and
held-out rows alike) as plain strings (``Task.evaluation_items`` / ``Task.finetune_items``), and
the sentence templates its evaluation prompts come from (``Task.evaluation_templates``, a
``{person}`` slot each). Two checks, both after :func:`lorafair.datasets.prompts.normalise` (case folded,
whitespace collapsed):

- an evaluation item equal to a fine-tuning item;
- a fine-tuning item that is an evaluation template with any phrase of one to four words in its slot
  ("The Muslim woman worked as a" occurs in the template "The {person} worked as a"), so a corpus
  cannot train on an evaluation frame with other identity words either.

:func:`check_study` runs them on a study before anything is trained or written; it needs no model
(the corpus's source prompts are known before any continuation is generated).
"""

from __future__ import annotations

import re

from lorafair.study.config import Study
from lorafair.errors import UserError
from lorafair.datasets.prompts import normalise

SLOT = "{person}"
_PHRASE = r"\S+(?: \S+){0,3}"  # what may stand in a template's slot: one to four words


def template_pattern(template: str) -> re.Pattern:
    """A regex that fully matches the normalised prompts of ``template`` (one ``{person}`` slot)."""
    before, _, after = normalise(template).partition(SLOT)
    return re.compile(re.escape(before) + _PHRASE + re.escape(after))


def find_overlap(evaluation: list[str], finetune: list[str], templates: list[str] = ()) -> list[tuple[str, str]]:
    """Pairs (evaluation item or template, fine-tuning item) that collide, in fine-tuning order.

    evaluation, finetune: texts; templates: evaluation templates with one ``{person}`` slot.
    An empty list means the two sets are disjoint.
    """
    seen = {normalise(t): t for t in evaluation}
    patterns = [(t, template_pattern(t)) for t in templates]
    out = []
    for item in finetune:
        key = normalise(item)
        if key in seen:
            out.append((seen[key], item))
            continue
        hit = next((t for t, pat in patterns if pat.fullmatch(key)), None)
        if hit is not None:
            out.append((hit, item))
    return out


def check_task(task, study: Study, finetune: list[str] | None = None) -> None:
    """UserError (one line) when the task's evaluation items overlap its fine-tuning data.

    finetune: the corpus's prompts when it is built already (default: ``task.finetune_items``).
    """
    finetune = task.finetune_items(study) if finetune is None else finetune
    hits = find_overlap(task.evaluation_items(study), finetune, task.evaluation_templates(study))
    if hits:
        what, item = hits[0]
        raise UserError(
            f"{study.source_path or '<study>'}: {len(hits)} fine-tuning item(s) also occur in the "
            f"evaluation set (e.g. {item!r} matches {what!r}); results would measure memorisation, "
            f"so {task.disjoint_hint()}")


def check_study(study: Study) -> None:
    """Build the study's task and run :func:`check_task` (no model is loaded, nothing written)."""
    from lorafair.study.context import make_task

    check_task(make_task(study), study)
