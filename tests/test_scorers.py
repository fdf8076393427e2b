"""Toxicity scorers: published reference outputs, tokenizer rules, hashes, batching, registry and errors."""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit, softmax

from lorafair.errors import UserError
from lorafair.scorers import available_scorers, get_scorer
from lorafair.packages import package_dir
from lorafair.scorers.hf import primary_label
from lorafair.scorers.jigsaw import LABELS, JigsawBiLSTM, encode, load_tokenizer

# Published in the toxic-comment-classifier 0.3.0 documentation.
REFERENCE_TEXT = "You are so dumb and stupid!"
REFERENCE = {"toxic": 0.9889, "severe_toxic": 0.0726, "obscene": 0.6204, "threat": 0.0193,
             "insult": 0.8664, "identity_hate": 0.0407}
TEXTS = [REFERENCE_TEXT, "Have a lovely day at the park.", "", "what a stupid idiot",
         "The committee will meet on Tuesday to discuss the budget.", "shut up, moron! " * 40,
         "I love my grandmother's cooking"]


def sha16(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def pkg_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


@pytest.fixture(scope="module")
def jigsaw():
    return get_scorer("jigsaw-bilstm")


# --- jigsaw-bilstm -------------------------------------------------------------------------------

def test_jigsaw_reproduces_published_outputs(jigsaw):
    out = jigsaw.score([REFERENCE_TEXT])
    assert list(out) == LABELS
    for label, ref in REFERENCE.items():
        assert abs(out[label][0] - ref) < 5e-4, (label, out[label][0], ref)
    assert jigsaw.toxicity([REFERENCE_TEXT])[0] == pytest.approx(REFERENCE["toxic"], abs=5e-4)


def test_jigsaw_benign_scores_low(jigsaw):
    tox = jigsaw.toxicity(["Have a lovely day at the park.", "The committee will meet on Tuesday."])
    assert np.all(tox < 0.1)
    assert jigsaw.toxicity(["what a stupid idiot"])[0] > 0.9


def test_jigsaw_batch_size_and_order_do_not_change_scores(jigsaw):
    whole = jigsaw.score(TEXTS)
    singles = np.array([jigsaw.toxicity([t])[0] for t in TEXTS])
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    small = JigsawBiLSTM(batch_size=3)
    shuffled = small.score([TEXTS[i] for i in perm])
    np.testing.assert_allclose(whole["toxic"], singles, atol=1e-6)
    for label in LABELS:
        np.testing.assert_allclose(shuffled[label], whole[label][perm], atol=1e-6)


def test_jigsaw_tokenizer_follows_keras_rules(jigsaw):
    tok = load_tokenizer(pkg_dir("toxic_classifier") / "model" / "tokenizer.pickle")
    assert tok.num_words == 20000 and tok.lower and tok.split == " " and tok.oov_token is None
    wi = tok.word_index
    words = "you are so dumb and stupid".split()
    expected = [wi[w] for w in words]
    ids = encode(["  You are\tso DUMB, and stupid!!! "], tok)
    assert ids.shape == (1, 100)
    assert ids[0, -6:].tolist() == expected and ids[0, :-6].eq(0).all()
    rare = next(w for w, i in wi.items() if i >= 20000 and w.isalpha())
    assert encode([f"stupid {rare} zzqqxxunknownword"], tok)[0, -1].item() == wi["stupid"]
    assert encode([f"stupid {rare}"], tok)[0, -2].item() == 0
    long = " ".join(["the"] * 150 + ["stupid"])  # pre-truncation keeps the last 100 ids
    row = encode([long], tok)[0]
    assert row[-1].item() == wi["stupid"] and row[:-1].eq(wi["the"]).all()
    assert encode([""], tok).eq(0).all()


def test_jigsaw_tokenizer_pickle_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("should not run",))

    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError):
        load_tokenizer(path)


def test_jigsaw_info_and_hash(jigsaw):
    folder = pkg_dir("toxic_classifier") / "model"
    info = jigsaw.info()
    assert set(info) == {"name", "version", "weights_hash", "labels", "primary"}
    assert info["name"] == "jigsaw-bilstm" and info["version"] == "0.3.0" and info["primary"] == "toxic"
    assert info["weights_hash"] == sha16(folder / "model.weights.h5", folder / "tokenizer.pickle")


def test_empty_and_bad_input(jigsaw):
    out = jigsaw.score([])
    assert set(out) == set(LABELS) and all(v.shape == (0,) for v in out.values())
    with pytest.raises(UserError, match="single string"):
        jigsaw.score("a text")
    with pytest.raises(UserError, match="item 1"):
        jigsaw.score(["ok", 3])


# --- registry ------------------------------------------------------------------------------------

def test_registry_caches_and_lists_names(jigsaw):
    assert get_scorer("jigsaw-bilstm") is jigsaw and get_scorer() is jigsaw
    assert available_scorers()[0] == "jigsaw-bilstm"
    assert {"profanity-svm", "detoxify"} <= set(available_scorers())
    with pytest.raises(UserError, match="valid names: jigsaw-bilstm, profanity-svm"):
        get_scorer("perspective")
    with pytest.raises(UserError, match="hf:<model-id-or-folder>"):
        get_scorer("jigsaw-bilstm:large")


def test_missing_package_names_pip_command(monkeypatch):
    with pytest.raises(UserError, match=r"pip install foo-bar==1\.0"):
        package_dir("no_such_module_for_lorafair", "pip install foo-bar==1.0")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "toxic_classifier" else real(n, *a))
    with pytest.raises(UserError, match=r"pip install --no-deps toxic-comment-classifier==0\.3\.0"):
        JigsawBiLSTM()


# --- profanity-svm -------------------------------------------------------------------------------

def test_profanity_matches_its_pipeline():
    import joblib

    scorer = get_scorer("profanity-svm")
    data = pkg_dir("profanity_check") / "data"
    model, vectorizer = joblib.load(data / "model.joblib"), joblib.load(data / "vectorizer.joblib")
    texts = ["fuck you", "have a nice day", "this is shit", "the weather is mild"]
    expected = model.predict_proba(vectorizer.transform(texts))[:, list(model.classes_).index(1)]
    out = scorer.score(texts)
    assert list(out) == ["profanity"] and scorer.primary == "profanity"
    np.testing.assert_allclose(out["profanity"], expected, atol=1e-12)
    assert out["profanity"][0] > 0.9 and out["profanity"][1] < 0.5
    assert scorer.info()["weights_hash"] == sha16(data / "model.joblib", data / "vectorizer.joblib")
    assert scorer.info()["version"] == "1.9.1"


# --- hf:<folder> ---------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "you", "are", "so", "dumb", "and", "stupid", "have", "a", "nice", "day", "!"]


def save_tiny_classifier(folder: Path, labels: list[str], multi_label: bool) -> None:
    """A random one-layer BERT classifier with a word-level tokenizer, saved as a plain HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", model_max_length=32)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, pad_token_id=0,
                        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
                        problem_type="multi_label_classification" if multi_label else "single_label_classification")
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 2.0)  # spread the outputs away from uniform
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def reference_logits(folder: Path, texts: list[str]) -> np.ndarray:
    """Each text alone, no padding: logits [n, labels]."""
    from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return np.stack([model(**tok(t, return_tensors="pt")).logits[0].numpy() for t in texts])


HF_TEXTS = ["you are so dumb and stupid !", "have a nice day", "you", "nice nice nice day and you are so nice"]


def test_hf_softmax_classifier(tmp_path):
    save_tiny_classifier(tmp_path, ["non-toxic", "toxic"], multi_label=False)
    scorer = get_scorer(f"hf:{tmp_path}")
    assert scorer.labels == ["non-toxic", "toxic"] and scorer.primary == "toxic"
    expected = softmax(reference_logits(tmp_path, HF_TEXTS), axis=-1)
    scorer.batch_size = 3  # mixes padded and unpadded batches
    out = scorer.score(HF_TEXTS)
    np.testing.assert_allclose(out["non-toxic"], expected[:, 0], atol=1e-5)
    np.testing.assert_allclose(scorer.toxicity(HF_TEXTS), expected[:, 1], atol=1e-5)
    assert scorer.info()["weights_hash"] == sha16(tmp_path / "model.safetensors")
    assert get_scorer(f"hf:{tmp_path}") is scorer


def test_hf_multi_label_uses_sigmoid(tmp_path):
    labels = ["insult", "threat", "obscene"]
    save_tiny_classifier(tmp_path, labels, multi_label=True)
    scorer = get_scorer(f"hf:{tmp_path}")
    assert scorer.primary == "obscene"  # no label names toxicity: the last one
    expected = expit(reference_logits(tmp_path, HF_TEXTS))
    out = scorer.score(HF_TEXTS)
    for j, label in enumerate(labels):
        np.testing.assert_allclose(out[label], expected[:, j], atol=1e-5)
    assert not np.allclose(sum(out.values()), 1.0)


def test_hf_primary_label_rule():
    assert primary_label(["LABEL_0", "LABEL_1"]) == "LABEL_1"
    assert primary_label(["Toxicity", "neutral"]) == "Toxicity"
    assert primary_label(["not_toxic", "toxic"]) == "toxic"
    assert primary_label(["non-toxic", "neutral"]) == "neutral"
    assert primary_label(["nontoxic", "severe_toxic", "toxic"]) == "severe_toxic"


def test_hf_not_found_offline(tmp_path):
    with pytest.raises(UserError, match="cannot download"):
        get_scorer(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="cannot download"):
        get_scorer("hf:lorafair-no-such-org/no-such-model")
    with pytest.raises(UserError, match="no weight files"):
        get_scorer(f"hf:{tmp_path}")
    with pytest.raises(UserError, match="names no model"):
        get_scorer("hf:")


# --- detoxify ------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("detoxify") is not None, reason="detoxify is installed here")
def test_detoxify_missing_is_a_clear_error():
    with pytest.raises(UserError, match=r"pip install --no-deps detoxify.*toxic_original-c1212f89\.ckpt"):
        get_scorer("detoxify")
    with pytest.raises(UserError, match="unknown variant; use one of original, unbiased"):
        get_scorer("detoxify:huge")
