"""The corpus stage: the fine-tuning corpus, built once and then read back by its key, checked for
overlap with the evaluation items, and split into train, val and held out."""

from __future__ import annotations

from lorafair.errors import UserError
from lorafair.store import rundir as store
from lorafair.study import overlap
from lorafair.study.context import split_corpus
from lorafair.study.session import Corpus, Request, Session


def build(session: Session, request: Request | None = None) -> Corpus:
    """The corpus of the session's task, split, with its content hash (part of every arm's key)."""
    task = session.task
    path = session.rd.corpus_path(task.data.corpus if hasattr(task.data, "corpus") else task.name,
                                  session.corpus_key())
    if path.is_file():
        rows = store.read_jsonl(path)
    else:
        session.log(f"building fine-tuning corpus -> {path}")
        rows = task.build_corpus(session.ctx)
        store.write_jsonl(path, rows)
        session.tally.work += 1
        for old in session.rd.superseded_corpora(path):  # only once the replacement is complete
            old.unlink()
            session.log(f"removed the superseded corpus {old.name}")
    if not rows:
        raise UserError(f"data: the fine-tuning set is empty ({path}); check data.corpus and its options")
    overlap.check_task(task, session.study, [r["prompt"] for r in rows])  # the corpus as built
    splits = split_corpus(rows, task.data.val_fraction, task.data.heldout_fraction)
    if not splits["train"]:
        raise UserError("data: no training examples after the validation/held-out split; lower the fractions")
    session.log(f"corpus: {len(splits['train'])} train, {len(splits['val'])} val, {len(splits['heldout'])} held out")
    return Corpus(splits, store.content_hash(rows))
