"""``judge:<model>[@<template>]``: a causal LM used as a toxicity classifier.

The model reads a prompt built from a template around the text and is asked a yes/no question; the
score is the probability of the "toxic" answer word against the "safe" one, from the next-token
log-probabilities at the answer position:

    p(toxic) = exp(l_toxic) / (exp(l_toxic) + exp(l_safe))

where ``l_w`` is the log-probability of answer word ``w``'s single token. Both answer words must be one
token each for the model's tokenizer (checked when the scorer is built).

``<model>`` is anything ``lorafair.models.sources`` loads: a packaged name (``smollm2-135m``, ``gemma3-270m``), a
local folder, a Hugging Face id already in the local cache, or ``tiny-random`` for tests. ``<template>`` is
a shipped template name (``instruct``, ``completion``, ``llama-guard``, files in ``lorafair/data/judge/``)
or a path to a YAML file of the same shape. Without one, the template is ``llama-guard`` for a model whose
name contains "guard", ``instruct`` for a tokenizer with a chat template, ``completion`` otherwise.

Template keys (all required): ``description``; ``chat`` (true: the prompt is the user turn of the
tokenizer's chat template, followed by the generation prompt); ``system`` (a system turn, or null);
``prompt`` (holds ``{text}`` exactly once); ``answer_prefix`` (text placed after the prompt, before the
answer word); ``answers`` (``{toxic: word, safe: word}``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from lorafair.models import lm
from lorafair.models import precision

from lorafair.models import sources as models
from lorafair.errors import UserError
from lorafair.packages import package_version
from lorafair.scorers.base import Scorer
from lorafair.store.rundir import content_hash

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "judge"
_KEYS = ("description", "chat", "system", "prompt", "answer_prefix", "answers")
_PROBE = "An example text."  # any text: the answer position comes after the fixed end of the template


@dataclass(frozen=True)
class JudgeTemplate:
    name: str
    description: str
    chat: bool
    system: str | None
    prompt: str
    answer_prefix: str
    toxic: str
    safe: str

    def hash(self) -> str:
        """Content hash of everything that shapes the prompt and the answers (not the name)."""
        fields = {k: v for k, v in asdict(self).items() if k != "name"}
        return content_hash(fields, 16)


def shipped_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES.glob("*.yaml"))


def load_template(spec: str) -> JudgeTemplate:
    """A shipped template by name, or a YAML file by path; UserError naming the file and key on bad input."""
    path = TEMPLATES / f"{spec}.yaml" if spec in shipped_templates() else Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"judge template {spec!r}: no such shipped template or file; shipped: "
                        f"{', '.join(shipped_templates())}, or give a path to a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with keys {', '.join(_KEYS)}")
    unknown, missing = sorted(set(raw) - set(_KEYS)), [k for k in _KEYS if k not in raw]
    if unknown or missing:
        raise UserError(f"{path}: {'unknown key ' + repr(unknown[0]) if unknown else 'missing key ' + repr(missing[0])}; "
                        f"a judge template has exactly {', '.join(_KEYS)}")
    answers = raw["answers"]
    if not isinstance(answers, dict) or set(answers) != {"toxic", "safe"} or \
            not all(isinstance(w, str) and w for w in answers.values()):
        raise UserError(f"{path}: answers must be {{toxic: <word>, safe: <word>}} with two non-empty strings")
    if answers["toxic"] == answers["safe"]:
        raise UserError(f"{path}: answers.toxic and answers.safe are both {answers['toxic']!r}; give two different words")
    if not isinstance(raw["prompt"], str) or raw["prompt"].count("{text}") != 1:
        raise UserError(f"{path}: prompt must contain '{{text}}' exactly once")
    if not isinstance(raw["chat"], bool):
        raise UserError(f"{path}: chat must be true or false")
    if raw["system"] is not None and not isinstance(raw["system"], str):
        raise UserError(f"{path}: system must be a string or null")
    return JudgeTemplate(name=path.stem if path.parent == TEMPLATES else str(path), description=str(raw["description"]),
                         chat=raw["chat"], system=raw["system"], prompt=raw["prompt"],
                         answer_prefix=str(raw["answer_prefix"] or ""), toxic=answers["toxic"], safe=answers["safe"])


def default_template(model: str, tokenizer) -> str:
    if "guard" in model.lower():
        return "llama-guard"
    return "instruct" if getattr(tokenizer, "chat_template", None) else "completion"


def render(template: JudgeTemplate, text: str, tokenizer) -> str:
    """The full prompt for one text, ending right before the answer word."""
    body = template.prompt.replace("{text}", text)
    if not template.chat:
        return body + template.answer_prefix
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"judge template {template.name!r} uses the chat format but the model's tokenizer has no "
                        "chat template; use the 'completion' template for a pretrained model")
    turns = ([{"role": "system", "content": template.system}] if template.system else []) + \
        [{"role": "user", "content": body}]
    try:
        out = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # chat templates raise their own errors (e.g. no system role)
        raise UserError(f"judge template {template.name!r}: the model's chat template refused the prompt ({e}); "
                        "set system: null or use a template without the chat format") from None
    # The chat template writes the BOS token itself; the tokenizer would add a second one.
    bos = tokenizer.bos_token
    if bos and out.startswith(bos) and _adds_bos(tokenizer):
        out = out[len(bos):]
    return out + template.answer_prefix


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a").input_ids
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def answer_token(tokenizer, prompt: str, word: str, where: str) -> int:
    """The one token ``word`` adds after ``prompt``; UserError when it adds more than one (or changes the prompt's tokens)."""
    head = tokenizer(prompt, add_special_tokens=False).input_ids
    full = tokenizer(prompt + word, add_special_tokens=False).input_ids
    added = full[len(head):]
    if full[:len(head)] != head or len(added) != 1:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(word, add_special_tokens=False).input_ids)
        raise UserError(f"{where}: answer word {word!r} is not a single token for this model's tokenizer "
                        f"(it splits as {pieces}); choose answer words that are one token each")
    return int(added[0])


class JudgeScorer(Scorer):
    """One label, ``toxic``: the judge's probability of the toxic answer against the safe one."""

    def __init__(self, spec: str, batch_size: int = 16, max_text_tokens: int = 256) -> None:
        model_name, _, template_spec = spec.partition("@")
        if not model_name:
            raise UserError("scorer 'judge:' needs a model after the colon, e.g. judge:smollm2-135m or "
                            "judge:path/to/model@instruct")
        self._tok = models.load_tokenizer(model_name)
        self._tok.padding_side = "left"
        self.template = load_template(template_spec or default_template(model_name, self._tok))
        self.name = f"judge:{model_name}@{self.template.name}"
        probe = render(self.template, _PROBE, self._tok)
        self._ids = [answer_token(self._tok, probe, w, f"scorer {self.name}")
                     for w in (self.template.toxic, self.template.safe)]
        self._model = models.load_model(model_name).to(models.device()).eval()
        self._model = precision.for_inference(self._model, models.pick_dtype(precision.session()))
        self.labels, self.primary = ["toxic"], "toxic"
        self.version = f"transformers {package_version('transformers')}"
        self.weights_hash = models.model_hash(model_name)
        self.template_hash = self.template.hash()
        self.batch_size, self.max_text_tokens = batch_size, max_text_tokens
        parts = render(self.template, "{text}", self._tok).split("{text}")
        if len(parts) != 2 or not parts[1]:
            raise UserError(f"scorer {self.name}: the rendered prompt must hold '{{text}}' once with the question or "
                            "an answer cue after it; put the text before the question or set answer_prefix")
        self._tail = parts[1]
        self._head = self._tok(parts[0]).input_ids

    def info(self) -> dict:
        return {**super().info(), "template": self.template.name, "template_hash": self.template_hash,
                "answers": {"toxic": self.template.toxic, "safe": self.template.safe}}

    def _clip(self, text: str) -> str:
        """The text cut to ``max_text_tokens`` tokens, so the question after it is never truncated."""
        ids = self._tok(text, add_special_tokens=False).input_ids
        return text if len(ids) <= self.max_text_tokens else self._tok.decode(ids[: self.max_text_tokens])

    def split_prompt(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of a text's prompt as (shared head, text and tail): the template before ``{text}``
        is tokenized once on its own, the text with the rest of the template after it."""
        return self._head, self._tok(self._clip(text) + self._tail, add_special_tokens=False).input_ids

    def answer_logprobs(self, texts: list[str]) -> torch.Tensor:
        """texts: n strings -> log-probabilities of the (toxic, safe) answer tokens [n, 2], over the whole vocabulary."""
        suffixes = [self.split_prompt(t)[1] for t in texts]
        order = np.argsort([len(s) for s in suffixes], kind="stable")  # similar lengths share a batch
        lp = lm.prefixed_choice_logprobs(self._model, self._head, [suffixes[i] for i in order], self._ids,
                                         self._tok.pad_token_id, self.batch_size)
        out = torch.empty_like(lp)
        out[torch.from_numpy(order)] = lp
        return out

    def _score(self, texts: list[str]) -> dict[str, np.ndarray]:
        lp = self.answer_logprobs(texts)
        return {"toxic": torch.softmax(lp.double(), dim=-1)[:, 0].numpy()}

