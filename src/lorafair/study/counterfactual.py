"""Feeds the counterfactual divergence (``analysis.counterfactual``) with a study's arms and writes it.

- :func:`build_items`: the identity prompts, tokenized, each template followed by one shared
  continuation: the base model's greedy continuation of the template with the neutral person "person".
- :func:`evaluate_arms`: per arm × seed, the divergence of every counterfactual pair of every template
  (model output, and per Logit Lens layer when ``evaluation.counterfactual.layers``), written as the
  evaluation ``counterfactual`` of that arm and seed; skipped when already computed with the same
  settings.
- :func:`run`: the stage (both of the above).
- :func:`pool`: every arm × seed together: the crossed interval over seeds and templates, arm − full,
  the share of full's reduction, and D per layer, written to ``analysis/counterfactual.json``.
"""

from __future__ import annotations

import pandas as pd
import torch

from lorafair.analysis import counterfactual as C
from lorafair.analysis import lens
from lorafair.arms import kinds
from lorafair.arms.names import bank_name
from lorafair.study.decide import fit_by_arm
from lorafair.datasets import prompts
from lorafair.models.generate import generate
from lorafair.stats import equivalence, metrics
from lorafair.stats import intervals as stats
from lorafair.store import rundir as store
from lorafair.study.session import Request, Session

KINDS = {"identity": "all", "identity-race": "race", "identity-religion": "religion"}
UNITS = {"js": "Jensen-Shannon divergence (nats) between counterfactual prompts",
         "kl_ab": "KL(group a || group b) (nats)", "kl_ba": "KL(group b || group a) (nats)"}
RESULT = "counterfactual"
# Equivalence margin δ of D_arm − D_full (JS, nats), overridable by evaluation.margins.cf_js: about an
# eighth of the packaged base model's D on the religion prompts (0.039 nats), see docs/measures.md.
MARGINS = {"cf_js": 0.005}


def build_items(ctx, model) -> tuple[list[dict], dict[str, str]]:
    """Identity prompts with token ids and their template's shared continuation.

    model: the base model. Returns (items, {template_id: continuation text}).
    """
    cfg = ctx.study.evaluation.counterfactual
    tok = ctx.tokenizer
    rows = prompts.identity_prompts(KINDS[cfg.prompts], split="eval")
    neutral: dict[str, dict] = {}
    for r in rows:
        neutral.setdefault(r["template_id"], {"id": r["template_id"],
                                              "prompt": r["prompt"].replace(r["person"], "person")})
    gen = generate(model, tok, list(neutral.values()), 1, cfg.positions, seed=0, greedy=True,
                   batch_size=ctx.study.evaluation.batch_size)
    text = {g["prompt_id"]: g["continuation"] for g in gen}
    cont = {t: tok(text[t], add_special_tokens=False)["input_ids"] for t in text}
    items = [{"template_id": r["template_id"], "axis": r["axis"], "gender": r["gender"], "group": r["group"],
              "prompt_ids": tok(r["prompt"])["input_ids"], "cont_ids": cont[r["template_id"]]} for r in rows]
    return items, text


def divergence_rows(ctx, model, items: list[dict]) -> pd.DataFrame:
    """Per (template, pair, layer) divergences of one model (see ``analysis.counterfactual``)."""
    cfg = ctx.study.evaluation.counterfactual
    dev = next(model.parameters()).device

    def logits_fn(ids, attn):
        return model(input_ids=ids, attention_mask=attn).logits

    def hidden_fn(ids, attn):
        return lens.lens_hidden(model, ids, attn)

    def project_fn(h):
        return lens.project(model, h)

    return C.compute_divergence(items, cfg.positions, ctx.tokenizer.pad_token_id, logits_fn,
                                hidden_fn if cfg.layers else None, project_fn, device=dev,
                                layer_stride=cfg.layer_stride)


def summarize(rows: pd.DataFrame) -> dict:
    """One arm × seed: D (JS, KL both ways) with a t interval over templates, per group pair, per layer."""
    out_rows = rows[rows["layer"] == C.OUTPUT_LAYER]
    per_t = out_rows.groupby("template_id", sort=True)[list(C.DIVERGENCES)].mean().to_numpy()[None]  # [1, T, 3]
    metrics_out = {}
    for i, col in enumerate(C.DIVERGENCES):
        r = stats.crossed_interval(per_t[..., [i]])
        metrics_out[f"cf_{col}"] = metrics.record(r["value"], r["lo"], r["hi"], higher_is_better=False,
                                                  unit=UNITS[col], n=r["n_units"], interval="t over templates")
    layers = rows[rows["layer"] != C.OUTPUT_LAYER]
    by_layer = [{"layer": int(layer), "js": C.overall(g)} for layer, g in layers.groupby("layer", sort=True)]
    return {"metrics": metrics_out, "by_group_pair": C.group_pair_means(out_rows),
            "by_layer": by_layer, "n_templates": int(out_rows["template_id"].nunique()),
            "n_pairs": int(len(out_rows))}


def run(session: Session, request: Request) -> dict | None:
    """The stage: the divergence of every finished arm x seed (:func:`evaluate_arms`), then all of
    them pooled (:func:`pool`)."""
    evaluate_arms(session, request.arms, request.force)
    return pool(session, session.arms)


def evaluate_arms(session: Session, arms, force: bool = False) -> None:
    """The divergence of every finished arm × seed not yet computed with these settings."""
    study, rd, ctx = session.study, session.rd, session.ctx
    todo = []
    for arm, seed in session.trained(arms):
        h = session.counterfactual_key(arm, seed)
        cached = rd.read_eval(arm.name, seed, RESULT)
        if force or cached is None or cached[0].get("hash") != h:
            todo.append((arm, seed, h))
    session.tally.work += len(todo)
    if not todo:
        return
    bank = session.shared_bank(arms)
    with bank.use("base") as base:
        items, continuations = build_items(ctx, base)
    for arm, seed, h in todo:
        name = bank_name(arm.name, seed)
        if kinds.own_process(arm):
            bank.add_full(session.load_full(seed))
        with bank.use(name) as model, torch.no_grad():
            rows = divergence_rows(ctx, model, items)
        summary = summarize(rows)
        summary.update(hash=h, arm=arm.name, seed=seed, positions=study.evaluation.counterfactual.positions,
                       continuations=continuations)
        rd.write_eval(arm.name, seed, RESULT, summary, rows)
        js = summary["metrics"]["cf_js"]
        session.log(f"counterfactual divergence {arm.name} seed {seed}: JS {js['value']:.4g} "
                    f"[{js['lo']:.4g}, {js['hi']:.4g}] over {summary['n_templates']} templates")


def pool(session: Session, arms) -> dict | None:
    """Every arm × seed together (see ``analysis.counterfactual.summarize_arms``); written to
    ``analysis/counterfactual.json``. None when no divergence was computed."""
    rd = session.rd
    per_template, layer_rows = [], []
    for arm, seed in session.trained(arms):
        got = rd.read_eval(arm.name, seed, RESULT)
        if got is None:
            continue
        rows = got[1].assign(arm=arm.name, seed=seed)
        out_rows = rows[rows["layer"] == C.OUTPUT_LAYER]
        per_template.append(out_rows.groupby(["arm", "seed", "template_id"], as_index=False)[list(C.DIVERGENCES)].mean())
        layer_rows.append(rows.loc[rows["layer"] != C.OUTPUT_LAYER, ["arm", "seed", "template_id", "layer", "js"]])
    if not per_template:
        return None
    table = pd.concat(per_template, ignore_index=True)
    ref = ("base", "full")
    res = C.summarize_arms(table, reference=ref)
    layers = pd.concat(layer_rows, ignore_index=True)
    margins = {**MARGINS, **session.study.evaluation.margins}
    diffs = {a: {"cf_js": {**e["minus_full"], "higher_is_better": False}} for a, e in res.items() if e["minus_full"]}
    out = {"arms": {a: _records(e) for a, e in res.items()}, "reference": list(ref),
           "margins": {"cf_js": equivalence.margin_for("cf_js", margins)},
           "decisions": equivalence.decide_all(diffs, margins, fit=_fit(session, arms)),
           "by_layer": C.layer_means(layers).to_dict("records") if len(layers) else [],
           "n_templates": int(table["template_id"].nunique()),
           "interval": "crossed design: training seeds × templates (stats.crossed_interval)"}
    store.write_json(rd.analysis_path(RESULT), out)
    return out


def repool(run_dir) -> dict | None:
    """``analysis/counterfactual.json`` of a finished run pooled again from its stored per-template
    divergences (no model loaded); None when the study computes no counterfactual divergence."""
    from types import SimpleNamespace

    from lorafair.study.config import expand_arms, load_study

    rd = store.RunDir(run_dir)
    study = load_study(rd.study_path())
    if not study.evaluation.counterfactual.enabled:
        return None
    study.output = str(run_dir)
    arms = expand_arms(study)
    found = [(a, s) for a in arms for (name, s), _ in rd.seed_dirs() if name == a.name]
    return pool(SimpleNamespace(rd=rd, study=study, trained=lambda _arms: found), arms)


def _fit(session: Session, arms) -> dict:
    """The fit gate's learning-rate and loss checks (``study.decide.fit_by_arm``; the task's competence
    check needs the task's evaluation and is applied in compare.json): an arm that did not fit gets no
    verdict on divergence either."""
    return fit_by_arm(session.rd, [a.name for a in arms], {}, session.study.training.early_stopping_patience)


def _records(entry: dict) -> dict:
    """Interval records of ``stats`` with a direction and a unit added."""
    units = {"js": ("JS divergence (nats)", False), "kl_ab": ("KL(a || b) (nats)", False),
             "kl_ba": ("KL(b || a) (nats)", False), "minus_full": ("JS, arm − full (nats)", False),
             "reduction_share": ("share of full fine-tuning's reduction of JS", True)}
    out: dict = {"caveat": entry.get("caveat")}
    if entry.get("noise_floor") is not None:
        out["noise_floor"] = entry["noise_floor"]
    for key, (unit, hib) in units.items():
        r = entry.get(key)
        out[key] = None if r is None else {**r, "higher_is_better": hib, "unit": unit}
    return out
