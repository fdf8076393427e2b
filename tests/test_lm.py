"""lm.sequence_loglik scores every token of a text, the first included, after the start tokens."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from lorafair.models import lm

from lorafair.models import sources as models


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return models.load_model("tiny-random").eval(), models.load_tokenizer("tiny-random")


def _by_hand(model, ids: list[int], n_start: int) -> float:
    """Σ log p(x_t | x_<t) over the positions after the start tokens, one unpadded forward pass."""
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(n_start, len(ids))))


def test_every_token_scored_after_the_start_token(tiny):
    model, tok = tiny
    texts = ["Women are bad drivers.", "Men are bad drivers.", "x"]
    start = lm.start_ids(tok)
    assert start == [tok.bos_token_id]
    total, count = lm.sequence_loglik(model, tok, texts, batch_size=2)  # padded batches
    for text, t, c in zip(texts, total.tolist(), count.tolist()):
        ids = tok.encode(text, add_special_tokens=False)
        assert c == len(ids)  # the first token counts
        assert t == pytest.approx(_by_hand(model, start + ids, len(start)), abs=1e-4)
    assert float(total[0]) != pytest.approx(float(total[1]), abs=1e-6)  # sentences differing only in the first word differ


def test_start_token_fallbacks(tiny):
    model, tok = tiny
    no_bos = types.SimpleNamespace(bos_token_id=None, eos_token_id=7, encode=tok.encode, pad_token_id=None)
    assert lm.start_ids(no_bos) == [7]
    neither = types.SimpleNamespace(bos_token_id=None, eos_token_id=None, encode=tok.encode, pad_token_id=None)
    prefix = tok.encode(lm.NEUTRAL_PREFIX, add_special_tokens=False)
    assert lm.start_ids(neither) == prefix
    total, count = lm.sequence_loglik(model, neither, ["Some words here", "ok"], batch_size=2)
    for text, t, c in zip(["Some words here", "ok"], total.tolist(), count.tolist()):
        ids = tok.encode(text, add_special_tokens=False)
        assert c == len(ids)
        assert t == pytest.approx(_by_hand(model, prefix + ids, len(prefix)), abs=1e-4)
