"""The report stage: the run's report (HTML, Markdown, plots) from what the earlier stages wrote."""

from __future__ import annotations

from pathlib import Path

from lorafair.report import build_report
from lorafair.study.session import Request, Session


def build(session: Session, request: Request | None = None) -> Path:
    return build_report(session.rd.path)
