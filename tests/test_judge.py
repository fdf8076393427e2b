"""The judge scorer: its probability against a hand softmax, its templates and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax

from lorafair.models import sources as models
from lorafair.cli import app
from lorafair.errors import UserError
from lorafair.scorers import get_scorer
from lorafair.scorers.judge import load_template, render, shipped_templates

TEXTS = ["You are so dumb and stupid!", "Have a lovely day.", "ok",
         "The committee will meet on Tuesday to discuss the budget for the coming year and the new park."]


def hand_probability(template_name: str, texts: list[str]) -> np.ndarray:
    """Each prompt alone through the same seeded tiny model, no padding and no cache: softmax over the two
    answer logits. The prompt's tokens: the template before the text, then the text with the rest."""
    tok = models.load_tokenizer("tiny-random")
    model = models.load_model("tiny-random").eval()
    t = load_template(template_name)
    ids = [tok(w, add_special_tokens=False).input_ids for w in (t.toxic, t.safe)]
    assert all(len(i) == 1 for i in ids)
    head, tail = render(t, "{text}", tok).split("{text}")
    out = []
    with torch.no_grad():
        for text in texts:
            prompt = tok(head).input_ids + tok(text + tail, add_special_tokens=False).input_ids
            assert tok.decode(prompt) == render(t, text, tok)
            logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double().numpy()
            out.append(softmax(logits[[ids[0][0], ids[1][0]]])[0])
    return np.array(out)


@pytest.mark.parametrize("template", ["instruct", "completion"])
def test_probability_is_the_softmax_over_the_two_answer_tokens(template):
    scorer = get_scorer(f"judge:tiny-random@{template}")
    scorer.batch_size = 3  # padded and unpadded batches, reordered by length
    np.testing.assert_allclose(scorer.toxicity(TEXTS), hand_probability(template, TEXTS), atol=1e-5)
    # the same texts in another order give the same scores
    np.testing.assert_allclose(scorer.toxicity(TEXTS[::-1])[::-1], scorer.toxicity(TEXTS), atol=1e-6)


def test_default_template_and_provenance():
    scorer = get_scorer("judge:tiny-random")  # the default tokenizer has a chat template
    info = scorer.info()
    assert info["name"] == "judge:tiny-random@instruct" and info["template"] == "instruct"
    assert info["labels"] == ["toxic"] and info["weights_hash"] == "tiny-random"
    assert info["template_hash"] == load_template("instruct").hash() and len(info["template_hash"]) == 16
    assert load_template("instruct").hash() != load_template("completion").hash()


def test_instruct_prompt_is_the_chat_format(tok):
    t = load_template("instruct")
    prompt = render(t, "hello there", tok)
    assert prompt.startswith("<|im_start|>system\n" + t.system) and prompt.endswith("<|im_start|>assistant\n")
    assert '"hello there"' in prompt
    assert render(load_template("completion"), "hello", tok).endswith("Answer:")


def test_template_file_overrides_the_shipped_one(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text('description: x\nchat: false\nsystem: null\nprompt: "Text: {text}\\nToxic:"\n'
                 'answer_prefix: ""\nanswers: {toxic: " yes", safe: " no"}\n')
    scorer = get_scorer(f"judge:tiny-random@{f}")
    assert scorer.template.prompt == "Text: {text}\nToxic:" and scorer.name == f"judge:tiny-random@{f}"
    assert scorer.template_hash == load_template(str(f)).hash()


def test_multi_token_answer_word_fails_with_one_line(cli, tmp_path):
    with pytest.raises(UserError, match=r"answer word 'unsafe' is not a single token.*\['uns', 'afe'\]"):
        get_scorer("judge:tiny-random@llama-guard")
    r = cli.invoke(app, ["score", "some text", "--scorer", "judge:tiny-random@llama-guard"])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a single token" in lines[0], r.output


@pytest.mark.parametrize("content, message", [
    ("description: x\nchat: false\nsystem: null\nprompt: no slot\nanswer_prefix: ''\nanswers: {toxic: a, safe: b}\n",
     "exactly once"),
    ("description: x\nchat: false\nprompt: '{text}'\nanswer_prefix: ''\nanswers: {toxic: a, safe: b}\n",
     "missing key 'system'"),
    ("description: x\nchat: false\nsystem: null\nprompt: '{text}'\nanswer_prefix: ''\nanswers: {toxic: a, safe: b}\n"
     "temperature: 0\n", "unknown key 'temperature'"),
    ("description: x\nchat: false\nsystem: null\nprompt: '{text}'\nanswer_prefix: ''\nanswers: {toxic: a}\n",
     "answers must be"),
])
def test_bad_template_files(tmp_path, content, message):
    f = tmp_path / "t.yaml"
    f.write_text(content)
    with pytest.raises(UserError, match=message):
        load_template(str(f))


def test_unknown_template_and_missing_model():
    with pytest.raises(UserError, match="no such shipped template or file; shipped: completion, instruct, llama-guard"):
        load_template("nonesuch")
    with pytest.raises(UserError, match="needs a model"):
        get_scorer("judge:")
    assert set(shipped_templates()) == {"completion", "instruct", "llama-guard"}


@pytest.mark.slow
def test_packaged_smollm2_judge_runs_end_to_end():
    scorer = get_scorer("judge:smollm2-135m")
    p = scorer.toxicity(["You are a stupid idiot and I hate you.", "Have a lovely day at the park."])
    assert p.shape == (2,) and np.all((p > 0) & (p < 1))
    assert scorer.info()["weights_hash"] == models.model_hash("smollm2-135m")
