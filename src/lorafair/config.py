"""The study file: a typed, strict schema, loaded with yaml.safe_load.

Every error is a `UserError` naming the file, the key (with its line when known) and what to do;
an unknown key names the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lorafair.errors import UserError
from lorafair.lr_search import check_grids

LORA_VARIANTS = ("plain", "rslora", "dora")
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelConfig:
    source: str = "smollm2-135m"
    trust_remote_code: bool = False
    precision: str = "auto"  # auto: bf16 where the device supports it, fp32 on CPU


@dataclass
class TaskConfig:
    name: str = "toxicity"
    options: dict = field(default_factory=dict)  # validated by the task's own schema


@dataclass
class LRSearchConfig:
    """The learning-rate search (rules in lorafair.lr_search)."""

    enabled: bool = True
    # Log grids of the same size for every arm type. LoRA's update is scaled by alpha/r (alpha = 2r
    # here), so it needs a rate about ten times higher than full fine-tuning to move as far.
    full: list[float] = field(default_factory=lambda: [1e-5, 3e-5, 1e-4])
    lora: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    steps: int = 20  # each candidate runs the first `steps` steps of the final run's schedule
    max_extensions: int = 2  # grid steps added beyond an edge holding the best candidate


@dataclass
class TrainingConfig:
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 96
    lr_full: float = 3e-5
    lr_lora: float = 3e-4
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 10
    checkpoint_every: int = 10
    early_stopping_patience: int | None = None
    # Sequences of a batch end to end in one row instead of padded to the longest: the same loss and
    # gradients up to float rounding, no compute spent on padding.
    packing: bool = True
    lr_search: LRSearchConfig = field(default_factory=LRSearchConfig)


@dataclass
class EvaluationConfig:
    scorer: str = "jigsaw-bilstm"
    audit_scorer: bool = True  # audit the scorer (cached per scorer) and show how far to trust it in the report
    samples: int = 4
    max_new_tokens: int = 20
    temperature: float = 1.0
    top_p: float = 0.9
    greedy: bool = False
    n_prompts: int | None = 100
    batch_size: int = 32  # sequences per forward pass and arm
    mix_arms: bool = True  # base and LoRA arms generate in shared batches (batch_size rows per arm)
    bootstrap: int = 1000
    threshold: float = 0.5
    # A second scorer on the same continuations, with its agreement with `scorer`: "auto" (the
    # other packaged scorer), any scorer name, or null for none.
    second_scorer: str | None = "auto"
    probes: list[str] = field(default_factory=list)  # crows-pairs, stereoset
    n_probe_items: int | None = 200
    # Equivalence margin δ per headline metric (or metric-name prefix, e.g. accuracy_disparity for
    # accuracy_disparity_race), overriding the task's defaults: an arm is equivalent to full
    # fine-tuning on a metric when the 90% interval of arm − full lies inside (−δ, δ).
    margins: dict = field(default_factory=dict)
    min_group_size: int = 30  # groups with fewer test units are left out of gaps (and listed)
    merge_small_groups: bool = False  # instead merge them into one group "other"


@dataclass
class AnalysesConfig:
    kl: bool = True
    lens: bool = True
    weights: bool = True
    n_sequences: int = 48
    batch_size: int = 8
    energy_threshold: float = 0.9
    lens_examples: int = 4


@dataclass
class ExecutionConfig:
    """Where the study's jobs run. local: one after another in this process. ray: as Ray tasks,
    each with num_cpus/num_gpus of the cluster; address joins a running cluster ("auto" or
    host:port), none starts one on this machine."""

    backend: str = "local"  # local | ray
    address: str | None = None
    num_cpus: float = 1.0  # per job
    num_gpus: float = 0.0  # per job


@dataclass
class ArmSpec:
    type: str = "lora"  # base | full | lora
    rank: int | None = None
    ranks: list[int] | None = None
    alpha: float | None = None  # default 2 * rank
    dropout: float = 0.0
    variant: str = "plain"  # plain | rslora | dora
    target_modules: list[str] | None = None  # default: every attention and MLP projection
    lr: float | None = None  # fixes the rate by hand (skips the search for this arm)


@dataclass
class Study:
    name: str = "study"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: dict = field(default_factory=dict)  # fine-tuning corpus options, validated by the task
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    analyses: AnalysesConfig = field(default_factory=AnalysesConfig)
    arms: list[ArmSpec] = field(default_factory=lambda: [ArmSpec(type="base"), ArmSpec(type="full")])
    seeds: list[int] = field(default_factory=lambda: [0])
    output: str | None = None  # default runs/<name>
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    source_path: str | None = None


@dataclass(frozen=True)
class Arm:
    """One concrete arm after grid expansion."""

    name: str
    type: str
    rank: int | None = None
    alpha: float | None = None
    dropout: float = 0.0
    variant: str = "plain"
    target_modules: tuple[str, ...] = ()
    lr: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def second_scorer_name(e: EvaluationConfig) -> str | None:
    """The scorer giving the second opinion on generations, or None."""
    if e.second_scorer in (None, "", "none"):
        return None
    if e.second_scorer == "auto":
        from lorafair.scorers import other_scorer

        return other_scorer(e.scorer)
    return e.second_scorer


def expand_arms(study: Study) -> list[Arm]:
    arms: list[Arm] = []
    for spec in study.arms:
        if spec.type in ("base", "full"):
            arms.append(Arm(name=spec.type, type=spec.type, lr=spec.lr))
            continue
        ranks = spec.ranks if spec.ranks is not None else [spec.rank]
        prefix = "lora" if spec.variant == "plain" else spec.variant
        for r in ranks:
            arms.append(
                Arm(
                    name=f"{prefix}-r{r}",
                    type="lora",
                    rank=r,
                    alpha=spec.alpha if spec.alpha is not None else 2.0 * r,
                    dropout=spec.dropout,
                    variant=spec.variant,
                    target_modules=tuple(spec.target_modules or ALL_PROJECTIONS),
                    lr=spec.lr,
                )
            )
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"{study.source_path}: arms: arm {dup[0]!r} appears twice; remove the duplicate")
    return arms


# ---------------------------------------------------------------- loading and validation


def load_study(path: str | Path) -> Study:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such study file; give the path of a YAML study (see studies/)")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}:{where}: malformed YAML ({problem}); fix the syntax there") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a study file must be a mapping of sections (model, task, arms, ...)")
    study = _build(Study, raw, str(path), (), lines)
    study.source_path = str(path)
    validate(study)
    return study


def study_from_dict(raw: dict, source: str = "<dict>") -> Study:
    study = _build(Study, raw, source, (), {})
    study.source_path = source
    validate(study)
    return study


def validate(study: Study) -> None:
    src = study.source_path
    if not study.seeds:
        raise UserError(f"{src}: seeds: the seed list is empty; give at least one seed, e.g. seeds: [0]")
    if not study.arms:
        raise UserError(f"{src}: arms: no arms; list at least one (base, full, or lora with a rank)")
    t = study.training
    for key in ("lr_full", "lr_lora"):
        if getattr(t, key) <= 0:
            raise UserError(f"{src}: training.{key}: learning rate must be > 0, got {getattr(t, key)}")
    for key in ("batch_size", "grad_accum", "max_length", "eval_every", "checkpoint_every"):
        if getattr(t, key) < 1:
            raise UserError(f"{src}: training.{key}: must be >= 1, got {getattr(t, key)}")
    if t.schedule not in ("cosine", "linear", "constant"):
        raise UserError(f"{src}: training.schedule: {t.schedule!r} is not one of cosine, linear, constant")
    check_grids(t.lr_search.full, t.lr_search.lora, f"{src}: training.lr_search")
    if t.lr_search.steps < 1 or t.lr_search.max_extensions < 0:
        raise UserError(f"{src}: training.lr_search: steps must be >= 1 and max_extensions >= 0, got "
                        f"{t.lr_search.steps} and {t.lr_search.max_extensions}")
    if study.evaluation.samples < 1:
        raise UserError(f"{src}: evaluation.samples: k must be >= 1, got {study.evaluation.samples}")
    for name, delta in study.evaluation.margins.items():
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0:
            raise UserError(f"{src}: evaluation.margins.{name}: a margin must be a positive number, "
                            f"got {delta!r}")
    if study.evaluation.min_group_size < 1:
        raise UserError(f"{src}: evaluation.min_group_size: must be >= 1, "
                        f"got {study.evaluation.min_group_size}")
    if second_scorer_name(study.evaluation) == study.evaluation.scorer:
        raise UserError(f"{src}: evaluation.second_scorer: {study.evaluation.scorer!r} is already evaluation.scorer; "
                        "name a different scorer, 'auto' (the other packaged one) or null")
    if study.model.precision not in ("auto", "float32", "bfloat16"):
        raise UserError(f"{src}: model.precision: {study.model.precision!r} is not auto, float32 or bfloat16")
    validate_execution(study.execution, src)
    for i, spec in enumerate(study.arms):
        where = f"{src}: arms[{i}]"
        if spec.type not in ("base", "full", "lora"):
            raise UserError(f"{where}.type: {spec.type!r} is not one of base, full, lora")
        if spec.lr is not None and spec.lr <= 0:
            raise UserError(f"{where}.lr: learning rate must be > 0, got {spec.lr}")
        if spec.type != "lora":
            continue
        ranks = spec.ranks if spec.ranks is not None else ([spec.rank] if spec.rank is not None else [])
        if not ranks:
            raise UserError(f"{where}: a lora arm needs rank: R or ranks: [R, ...]")
        for r in ranks:
            if r <= 0:
                raise UserError(f"{where}: rank must be a positive integer, got {r}")
        if spec.variant not in LORA_VARIANTS:
            raise UserError(f"{where}.variant: {spec.variant!r} is not one of {', '.join(LORA_VARIANTS)}")
        if not 0 <= spec.dropout < 1:
            raise UserError(f"{where}.dropout: must be in [0, 1), got {spec.dropout}")
    expand_arms(study)


def validate_execution(e: ExecutionConfig, src: str | None) -> None:
    if e.backend not in ("local", "ray"):
        raise UserError(f"{src}: execution.backend: {e.backend!r} is not one of local, ray")
    for key in ("num_cpus", "num_gpus"):
        if getattr(e, key) < 0:
            raise UserError(f"{src}: execution.{key}: must be >= 0, got {getattr(e, key)}")


def _key_lines(node, prefix=()) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = prefix + (k.value,)
            out[path] = k.start_mark.line + 1
            out.update(_key_lines(v, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[prefix + (i,)] = v.start_mark.line + 1
            out.update(_key_lines(v, prefix + (i,)))
    return out


def _where(src: str, path: tuple, lines: dict) -> str:
    dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")
    line = lines.get(path)
    return f"{src}:{line}: {dotted}" if line else f"{src}: {dotted}"


def _build(cls, raw: Any, src: str, path: tuple, lines: dict):
    if raw is None:
        raw = {}
    if cls is ArmSpec and isinstance(raw, str):  # shorthand: "- base", "- full"
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise UserError(f"{_where(src, path, lines)}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.name != "source_path"]
    kwargs = {}
    for key, value in raw.items():
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
            raise UserError(f"{_where(src, path + (key,), lines)}: unknown key {key!r}; {hint}")
        kwargs[key] = _coerce(hints[key], value, src, path + (key,), lines)
    return cls(**kwargs)


def _coerce(tp, value, src, path, lines):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, src, path, lines)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, src, path, lines)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{_where(src, path, lines)}: expected a list, got {_tname(value)}")
        return [_coerce(args[0], v, src, path + (i,), lines) for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{_where(src, path, lines)}: expected a mapping, got {_tname(value)}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise UserError(f"{_where(src, path, lines)}: expected {tp.__name__}, got {_tname(value)} {value!r}")


def _tname(v) -> str:
    return type(v).__name__


def build_options(cls, raw: dict, src: str, section: str):
    """Validate a task's own options mapping against its dataclass (strict, like the rest)."""
    return _build(cls, raw or {}, src, (section,), {})


def resolved_dict(study: Study) -> dict:
    d = dataclasses.asdict(study)
    d.pop("source_path", None)
    return d
