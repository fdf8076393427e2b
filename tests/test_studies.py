"""Every shipped study file loads, validates, and builds its task; its arms fit its model where that
model is already converted here."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafair.models import sources as models
from lorafair.study.config import expand_arms, load_study
from lorafair.study.context import check_model, make_task

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


def test_studies_are_shipped():
    assert any(p.name == "smoke.yaml" for p in STUDIES)


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_study_loads_and_validates(path):
    study = load_study(path)
    task = make_task(study)
    assert task.name == study.task.name
    arms = expand_arms(study)
    assert arms and study.seeds
    assert len({a.name for a in arms}) == len(arms)
    source = study.model.source
    if source == models.TINY or (source in models.PACKAGED and models.is_cached(source)):
        check_model(study)  # only where the model is already converted: no conversion inside a test
