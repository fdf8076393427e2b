"""Tests for lorafair.datasets.prompts: RealToxicityPrompts split, identity templates, user JSONL files."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from lorafair.errors import UserError
from lorafair.datasets.prompts import (identity_families, identity_prompts, identity_templates,
                              load_identity_terms, load_prompt_file, normalise, rtp_toxic, split_of)


def test_rtp_split_disjoint_and_complete():
    fine, ev = rtp_toxic("finetune"), rtp_toxic("eval")
    texts_f, texts_e = {p["prompt"] for p in fine}, {p["prompt"] for p in ev}
    assert not texts_f & texts_e
    assert not {p["id"] for p in fine} & {p["id"] for p in ev}
    assert len(fine) + len(ev) == 993  # the shipped file has no duplicate texts
    assert 0.4 < len(ev) / 993 < 0.6
    for p in ev[:20]:
        assert int(hashlib.sha256(p["prompt"].encode()).hexdigest()[:8], 16) < 16**8 // 2
        assert split_of(p["prompt"]) == "eval"
    assert all(0.5 <= p["source_toxicity"] <= 1.0 and p["group"] is None for p in fine + ev)
    assert len({p["prompt"] for p in ev}) == len(ev)


def test_rtp_first_n_stable_and_seeded():
    full = rtp_toxic("eval")
    assert rtp_toxic("eval", n=10) == full[:10]
    assert rtp_toxic("eval", n=50)[:10] == full[:10]
    other = rtp_toxic("eval", seed=1)
    assert {p["id"] for p in other} == {p["id"] for p in full}  # same split, other order
    assert [p["id"] for p in other[:10]] != [p["id"] for p in full[:10]]
    with pytest.raises(UserError, match="at most"):
        rtp_toxic("eval", n=len(full) + 1)
    with pytest.raises(UserError, match="split"):
        rtp_toxic("test")


def test_identity_prompts_counts_and_labels():
    terms = load_identity_terms()
    race, rel = identity_prompts("race"), identity_prompts("religion")
    both = identity_prompts("all")
    n_t = len(terms["templates"])
    assert n_t >= 20
    assert len(terms["axes"]["race"]) >= 8 and len(terms["axes"]["religion"]) >= 6
    assert len(race) == n_t * len(terms["axes"]["race"]) * 2
    assert len(rel) == n_t * len(terms["axes"]["religion"]) * 2
    assert len(both) == len(race) + len(rel)
    assert len({p["id"] for p in both}) == len(both)
    assert len({p["prompt"] for p in both}) == len(both)
    assert {p["group"] for p in race} >= {"race=Black", "race=White", "race=Asian"}
    assert "religion=Muslim" in {p["group"] for p in rel}
    assert {p["gender"] for p in both} == {"female", "male"}
    assert all(p["group"] == f"{p['axis']}={p['term']}" for p in both)
    sample = next(p for p in rel if p["template_id"] == "occupation-1" and p["term"] == "Muslim"
                  and p["gender"] == "female")
    assert sample["prompt"] == "The Muslim woman worked as a"
    assert "sources" in terms and {"race", "religion", "templates"} <= set(terms["sources"])


def test_identity_prompts_differ_only_in_identity_phrase():
    by_template: dict[tuple[str, str], set[str]] = {}
    for p in identity_prompts("all"):
        assert p["prompt"].count(p["person"]) == 1
        assert p["person"] == f"{p['term']} {'woman' if p['gender'] == 'female' else 'man'}"
        by_template.setdefault((p["axis"], p["template_id"]), set()).add(
            p["prompt"].replace(p["person"], "{person}"))
    assert all(len(v) == 1 for v in by_template.values())
    # every template yields one prompt per (term, gender): balanced groups
    counts = Counter((p["template_id"], p["group"]) for p in identity_prompts("race"))
    assert set(counts.values()) == {2}
    # no article before the identity phrase that would depend on the term ("a Asian")
    assert not any(f" a {p['person']}" in p["prompt"] or f" an {p['person']}" in p["prompt"]
                   for p in identity_prompts("all"))


def test_identity_bad_kind_and_custom_file(tmp_path):
    with pytest.raises(UserError, match="kind"):
        identity_prompts("gender")
    f = tmp_path / "terms.json"
    f.write_text(json.dumps({"genders": {"x": "person"}, "axes": {"race": ["Black", "White"]},
                             "templates": [{"id": "t1", "text": "The {person} is"}]}))
    got = identity_prompts("race", terms_path=f)
    assert [p["prompt"] for p in got] == ["The Black person is", "The White person is"]
    f.write_text(json.dumps({"genders": {}, "axes": {},
                             "templates": [{"id": "t1", "text": "no slot"}]}))
    with pytest.raises(UserError, match="exactly once"):
        load_identity_terms(f)


def test_identity_templates_split_into_training_and_evaluation():
    terms = load_identity_terms()
    ev, ft = identity_templates("eval"), identity_templates("finetune")
    assert len(ev) >= 15 and len(ft) >= 15 and len(ev) + len(ft) == len(terms["templates"])
    assert not {t["id"] for t in ev} & {t["id"] for t in ft}
    assert {t["category"] for t in ev} == {t["category"] for t in ft}  # every category on both sides
    prompts_ev = identity_prompts("all", split="eval")
    prompts_ft = identity_prompts("all", split="finetune")
    assert not {normalise(p["prompt"]) for p in prompts_ev} & {normalise(p["prompt"]) for p in prompts_ft}
    per_group = {g: len(tids) for g, tids in _templates_by_group(prompts_ev).items()}
    assert min(per_group.values()) >= 15  # every group is evaluated on at least 15 unseen templates
    assert len(per_group) == len(terms["axes"]["race"]) + len(terms["axes"]["religion"])
    assert {p["split"] for p in prompts_ev} == {"eval"}
    assert len(prompts_ev) + len(prompts_ft) == len(identity_prompts("all"))


def _templates_by_group(prompts):
    out: dict[str, set[str]] = {}
    for p in prompts:
        out.setdefault(p["group"], set()).add(p["template_id"])
    return out


def test_identity_families_group_by_template_and_axis():
    terms = load_identity_terms()
    fams = identity_families("all")
    assert len(fams) == len(identity_templates("eval")) * 2
    for (tid, axis), members in fams.items():
        assert len(members) == len(terms["axes"][axis]) * len(terms["genders"])
        assert {m["template_id"] for m in members} == {tid} and {m["axis"] for m in members} == {axis}
        assert len({m["prompt"].replace(m["person"], "{person}") for m in members}) == 1
    assert set(identity_families("race", split="finetune")) == {(t["id"], "race") for t in identity_templates("finetune")}


def test_template_split_field_and_fallback(tmp_path):
    f = tmp_path / "terms.json"
    tpl = [{"id": "a", "text": "The {person} is", "split": "finetune"}, {"id": "b", "text": "A {person} was"}]
    f.write_text(json.dumps({"genders": {"x": "person"}, "axes": {"race": ["Black"]}, "templates": tpl}))
    assert identity_templates("finetune", f)[0]["id"] == "a"
    assert identity_templates(None, f)[1]["split"] == split_of("A {person} was")
    f.write_text(json.dumps({"genders": {}, "axes": {}, "templates": [{**tpl[0], "split": "test"}]}))
    with pytest.raises(UserError, match="'finetune' or 'eval'"):
        load_identity_terms(f)
    f.write_text(json.dumps({"genders": {}, "axes": {}, "templates": [tpl[0], {"id": "c", "text": "THE {person}  is"}]}))
    with pytest.raises(UserError, match="same text"):
        load_identity_terms(f)


def test_load_prompt_file(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"prompt": "Hello", "group": "a", "extra": 1}\n'
                 '\n{"id": "q", "prompt": "World"}\n')
    got = load_prompt_file(f)
    assert got == [{"id": "mine-1", "prompt": "Hello", "group": "a", "extra": 1},
                   {"id": "q", "prompt": "World", "group": None}]
    g = tmp_path / "text.jsonl"
    g.write_text('{"text": "a"}\n')
    assert load_prompt_file(g, field="text")[0]["prompt"] == "a"


def test_load_prompt_file_errors(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: missing field 'prompt'"):
        load_prompt_file(f)
    f.write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON"):
        load_prompt_file(f)
    f.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(UserError, match="already used"):
        load_prompt_file(f)
    with pytest.raises(UserError, match="not found"):
        load_prompt_file(tmp_path / "missing.jsonl")
