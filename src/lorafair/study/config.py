"""The study file: a typed, strict schema, loaded with yaml.safe_load.

Every error is a `UserError` naming the file, the key (with its line when known) and what to do;
an unknown key names the closest valid one.

Each key states the values it accepts where it is defined (`lorafair.study.schema`), with `key(default, "(0, 1]")`,
`key(default, one_of=(...))`, `key(nonempty=True, factory=list)`: the range is checked as the key is
read, for the study's sections and for every task's options alike. A new key gets its check by being
defined this way. Checks that relate several keys live in `validate` (study) or the task's
constructor (its options); checks that open files or models live in `lorafair.study.preflight`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lorafair.arms import kinds
from lorafair.arms.names import LORA_VARIANTS, lora_name
from lorafair.errors import UserError
from lorafair.study import safe_yaml
from lorafair.study.schema import build, key, key_lines
from lorafair.training.lr_search import check_grids

PROBES = ("crows-pairs", "stereoset", "bbq")  # bias probes (lorafair.probes.run)
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"


@dataclass
class ModelConfig:
    source: str = key("smollm2-135m", nonempty=True)
    trust_remote_code: bool = False
    precision: str = key("auto", one_of=("auto", "float32", "bfloat16"))  # auto: bf16 where supported, else fp32


@dataclass
class TaskConfig:
    name: str = key("toxicity", nonempty=True)
    options: dict = field(default_factory=dict)  # validated by the task's own schema


@dataclass
class LRSearchConfig:
    """The learning-rate search (rules in lorafair.training.lr_search)."""

    enabled: bool = True
    # Log grids of the same size for every arm type. LoRA's update is scaled by alpha/r (alpha = 2r
    # here), so it needs a rate about ten times higher than full fine-tuning to move as far.
    full: list[float] = key(accepts="> 0", nonempty=True, factory=lambda: [1e-5, 3e-5, 1e-4])
    lora: list[float] = key(accepts="> 0", nonempty=True, factory=lambda: [1e-4, 3e-4, 1e-3])
    steps: int = key(20, "[1, 100000]")  # each candidate runs the first `steps` steps of the final run's schedule
    max_extensions: int = key(2, "[0, 100]")  # grid steps added beyond an edge holding the best candidate


MAX_STEPS = 1_000_000  # the schedule of every step is laid out up front; beyond this it does not fit


@dataclass
class TrainingConfig:
    epochs: float = key(1.0, "(0, 10000]")
    max_steps: int | None = key(None, f"[1, {MAX_STEPS}]")  # overrides epochs when set
    batch_size: int = key(8, "[1, 65536]")
    grad_accum: int = key(1, "[1, 65536]")
    max_length: int = key(96, "[2, 1000000]")  # at least a prompt token and a completion token
    lr_full: float = key(3e-5, "> 0")
    lr_lora: float = key(3e-4, "> 0")
    schedule: str = key("cosine", one_of=("cosine", "linear", "constant"))
    warmup_ratio: float = key(0.1, "[0, 1]")
    weight_decay: float = key(0.0, ">= 0")
    max_grad_norm: float = key(1.0, "> 0")  # a negative norm would turn clipping into gradient ascent
    eval_every: int = key(10, ">= 1")
    checkpoint_every: int = key(10, ">= 1")
    early_stopping_patience: int | None = key(None, ">= 1")
    # Sequences of a batch end to end in one row instead of padded to the longest: the same loss and
    # gradients up to float rounding, no compute spent on padding.
    packing: bool = True
    lr_search: LRSearchConfig = field(default_factory=LRSearchConfig)


@dataclass
class CounterfactualConfig:
    """Counterfactual divergence between identity prompts that differ only in the identity term."""

    enabled: bool = False
    positions: int = key(8, ">= 1")  # k: teacher-forced positions of the shared continuation
    layers: bool = True  # also through the Logit Lens, layer by layer
    layer_stride: int = key(1, ">= 1")  # every n-th layer (and always the last); each costs one output-head pass
    prompts: str = key("identity", one_of=("identity", "identity-race", "identity-religion"))


@dataclass
class SequentialConfig:
    """`lorafair run --until-decided`: seeds are added where a decision is open, decided again with
    group-sequential intervals (lorafair.stats.sequential) until settled, the cap or the budget."""

    max_seeds: int = key(8, "[2, 10000]")  # the cap on training seeds per arm (information fraction 1)
    seeds_per_look: int = key(2, "[1, 10000]")  # the fewest seeds a look adds to an open arm
    budget_minutes: float | None = key(None, "> 0")  # wall time the added looks may take (estimated ahead)


@dataclass
class EvaluationConfig:
    scorer: str = key("jigsaw-bilstm", nonempty=True)
    audit_scorer: bool = True  # audit the scorer (cached per scorer) and show how far to trust it in the report
    samples: int = key(4, "[1, 10000]")
    max_new_tokens: int = key(20, "[1, 100000]")
    temperature: float = key(1.0, "> 0")
    top_p: float = key(0.9, "(0, 1]")
    greedy: bool = False
    n_prompts: int | None = key(100, ">= 1")
    batch_size: int = key(32, "[1, 65536]")  # sequences per forward pass and arm
    mix_arms: bool = True  # base and LoRA arms generate in shared batches (batch_size rows per arm)
    bootstrap: int = key(1000, "[10, 1000000]")  # resamples behind every interval
    threshold: float = key(0.5, "(0, 1]")  # a continuation scoring at least this is toxic
    # A second scorer on the same continuations, with its agreement with `scorer`: "auto" (the
    # other packaged scorer), any scorer name, or null for none.
    second_scorer: str | None = key("auto", nonempty=True)
    probes: list[str] = key(one_of=PROBES, factory=list)
    n_probe_items: int | None = key(200, ">= 1")
    # Equivalence margin δ per headline metric (or metric-name prefix, e.g. accuracy_disparity for
    # accuracy_disparity_race), overriding the task's defaults: an arm is equivalent to full
    # fine-tuning on a metric when the 90% interval of arm − full lies inside (−δ, δ).
    margins: dict = field(default_factory=dict)
    # Primary metrics (names or prefixes) overriding the task's: the headline decisions, Holm-adjusted
    # together over arms, and the rank recommendation; the other metrics are secondary.
    primary: list[str] = key(factory=list)
    min_group_size: int = key(30, ">= 1")  # groups with fewer prompts or test rows are left out of gaps (and listed)
    # prompts that name a template: groups present in fewer templates are left out of gaps (and listed)
    min_group_templates: int = key(10, ">= 1")
    # a rate's group gap with a group expecting fewer events (at the pooled rate) is at the floor
    min_group_events: float = key(5.0, ">= 0")
    merge_small_groups: bool = False  # instead merge them into one group "other"
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    sequential: SequentialConfig = field(default_factory=SequentialConfig)


@dataclass
class AnalysesConfig:
    kl: bool = True
    lens: bool = True
    weights: bool = True
    n_sequences: int = key(48, ">= 1")
    batch_size: int = key(8, "[1, 65536]")
    energy_threshold: float = key(0.9, "(0, 1]")
    lens_examples: int = key(4, ">= 1")


@dataclass
class ExecutionConfig:
    """Where the study's jobs run. local: one after another in this process. ray: as Ray tasks,
    each with num_cpus/num_gpus of the cluster; address joins a running cluster ("auto" or
    host:port), none starts one on this machine."""

    backend: str = key("local", one_of=("local", "ray"))
    address: str | None = key(None, nonempty=True)
    num_cpus: float = key(1.0, ">= 0")  # per job
    num_gpus: float = key(0.0, ">= 0")  # per job


@dataclass
class TrackingConfig:
    """Training curves in an experiment tracker (lorafair.training.tracking): none, tensorboard
    (event files) or mlflow (a local SQLite store unless ``uri`` names another). ``dir``: where the
    event files or the SQLite store go, default ``<output>/tracking``. Written as one word
    (``tracking: tensorboard``) it is the backend."""

    SHORTHAND = "backend"
    backend: str = key("none", one_of=("none", "tensorboard", "mlflow"))
    dir: str | None = key(None, nonempty=True)
    uri: str | None = key(None, nonempty=True)  # mlflow only: a tracking URI, default sqlite:///<dir>/mlflow.db
    experiment: str | None = key(None, nonempty=True)  # mlflow only: default the study's name


@dataclass
class ArmSpec:
    SHORTHAND = "type"  # an arm written as a word ("- base", "- full") is its type
    type: str = key("lora", one_of=("base", "full", "lora"))
    rank: int | None = key(None, ">= 1")
    ranks: list[int] | None = key(None, ">= 1", nonempty=True)
    alpha: float | None = key(None, "> 0")  # default 2 * rank
    dropout: float = key(0.0, "[0, 1)")
    variant: str = key("plain", one_of=LORA_VARIANTS)
    # default: every attention and MLP projection
    target_modules: list[str] | None = key(None, nonempty=True, pattern=r"[A-Za-z0-9_.]+")
    lr: float | None = key(None, "> 0")  # fixes the rate by hand (skips the search for this arm)


@dataclass
class Study:
    name: str = key("study", pattern=SAFE_NAME)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: dict = field(default_factory=dict)  # fine-tuning corpus options, validated by the task
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    analyses: AnalysesConfig = field(default_factory=AnalysesConfig)
    arms: list[ArmSpec] = key(nonempty=True, factory=lambda: [ArmSpec(type="base"), ArmSpec(type="full")])
    seeds: list[int] = key(accepts=f"[0, {2**32 - 1}]", nonempty=True, factory=lambda: [0])
    output: str | None = key(None, nonempty=True)  # default runs/<name>
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
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
        if kinds.is_reference(spec):
            arms.append(Arm(name=spec.type, type=spec.type, lr=spec.lr))
            continue
        ranks = spec.ranks if spec.ranks is not None else [spec.rank]
        for r in ranks:
            arms.append(
                Arm(
                    name=lora_name(spec.variant, r),
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


SHIPPED = Path(__file__).resolve().parents[1] / "studies"


def shipped_studies() -> list[str]:
    """The names of the studies that install with the package (``lorafair run demo``)."""
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def resolve_study(path: str | Path) -> Path:
    """A study file's path: an existing file as given, else a shipped study by name (``demo``, ``demo.yaml``)."""
    path = Path(path)
    if path.is_file() or len(path.parts) != 1:
        return path
    shipped = SHIPPED / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return shipped if shipped.is_file() else path


def load_study(path: str | Path) -> Study:
    path = resolve_study(path)
    if not path.is_file():
        raise UserError(f"{path}: no such study file; give the path of a YAML study or the name of a shipped "
                        f"one ({', '.join(shipped_studies())})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); save the study as UTF-8") from None
    try:
        raw, node = safe_yaml.load(text, str(path))
        lines = key_lines(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}:{where}: malformed YAML ({problem}); fix the syntax there") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a study file must be a mapping of sections; write model:, task:, arms:, ... "
                        "as top-level keys (see studies/)")
    study = build(Study, raw, str(path), (), lines)
    study.source_path = str(path)
    validate(study)
    return study


def study_from_dict(raw: dict, source: str = "<dict>") -> Study:
    study = build(Study, raw, source, (), {})
    study.source_path = source
    validate(study)
    return study


def validate(study: Study) -> None:
    """What no single key can check: relations between keys. Each key's own range is checked as it
    is read (see `key`)."""
    src = study.source_path
    dup = sorted({s for s in study.seeds if study.seeds.count(s) > 1})
    if dup:
        raise UserError(f"{src}: seeds: seed {dup[0]} appears twice (every arm would be trained and counted twice); "
                        "remove the duplicate")
    for name, delta in study.evaluation.margins.items():
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) or not delta > 0:
            raise UserError(f"{src}: evaluation.margins.{name}: a margin must be a finite positive number, "
                            f"got {delta!r}; give a number > 0")
    check_grids(study.training.lr_search.full, study.training.lr_search.lora, f"{src}: training.lr_search")
    if second_scorer_name(study.evaluation) == study.evaluation.scorer:
        raise UserError(f"{src}: evaluation.second_scorer: {study.evaluation.scorer!r} is already evaluation.scorer; "
                        "name a different scorer, 'auto' (the other packaged one) or null")
    validate_execution(study.execution, src)
    if study.tracking.backend != "mlflow" and (study.tracking.uri or study.tracking.experiment):
        raise UserError(f"{src}: tracking: uri and experiment apply to the mlflow backend only; set "
                        "tracking.backend: mlflow or remove them")
    for i, spec in enumerate(study.arms):
        if kinds.is_lora(spec) and spec.rank is None and spec.ranks is None:
            raise UserError(f"{src}: arms[{i}]: a lora arm needs a rank; add rank: R or ranks: [R, ...]")
        if not kinds.is_lora(spec) and (spec.rank, spec.ranks, spec.alpha, spec.target_modules) != (None,) * 4:
            raise UserError(f"{src}: arms[{i}]: rank, ranks, alpha and target_modules apply to lora arms only; "
                            f"remove them from this {spec.type} arm")
    expand_arms(study)


def check_primary_names(study: Study, metrics: list[str]) -> None:
    """Every primary metric names a metric the task decides (or a prefix of one, or a metric under a
    prefix the task's margins use), and the counterfactual divergence only where it is computed."""
    src = study.source_path
    for name in study.evaluation.primary:
        if name == "cf_js" and not study.evaluation.counterfactual.enabled:
            raise UserError(f"{src}: evaluation.primary: cf_js (the counterfactual divergence) is computed only "
                            "with evaluation.counterfactual.enabled: true; enable it or remove cf_js")
        if not any(name == m or m.startswith(name + "_") or name.startswith(m + "_") for m in metrics):
            raise UserError(f"{src}: evaluation.primary: no metric of task {study.task.name!r} is named "
                            f"{name!r}; {_closest(name, metrics)}")


def check_margin_names(study: Study, metrics: list[str]) -> None:
    """Every margin of the study names a metric its task decides (or a prefix of such names, as the
    task's own defaults do), so a typo never silently leaves the default margin in force."""
    for name in study.evaluation.margins:
        if name not in metrics:
            raise UserError(f"{study.source_path}: evaluation.margins.{name}: no metric of task "
                            f"{study.task.name!r} has this name; {_closest(name, metrics)}")


def _closest(name: str, metrics: list[str]) -> str:
    """The hint for a metric name the task does not have: the closest name, else the list."""
    close = difflib.get_close_matches(name, metrics, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(sorted(metrics))}"


def validate_sequential(study: Study) -> None:
    """The sequential settings against the study's seeds (checked by ``run --until-decided``, which
    uses them): at least two seeds to start from, a cap that leaves room for a look."""
    q, n = study.evaluation.sequential, len(study.seeds)
    if n < 2:
        raise UserError(f"{study.source_path}: seeds: --until-decided starts from at least 2 training seeds (one "
                        "seed says nothing about seed-to-seed variation), the study has 1; list two or more")
    if q.max_seeds < n:
        raise UserError(f"{study.source_path}: evaluation.sequential.max_seeds: {q.max_seeds} is below the "
                        f"study's {n} seeds; raise it above {n} or list fewer seeds")


def validate_execution(e: ExecutionConfig, src: str | None) -> None:
    """The execution settings, also when the command line sets them."""
    if e.backend not in ("local", "ray"):
        raise UserError(f"{src}: execution.backend: {e.backend!r} is not one of local, ray; use one of them")
    for key_name in ("num_cpus", "num_gpus"):
        if getattr(e, key_name) < 0:
            raise UserError(f"{src}: execution.{key_name}: must be >= 0, got {getattr(e, key_name)}; give a value >= 0")


def resolved_dict(study: Study) -> dict:
    d = dataclasses.asdict(study)
    d.pop("source_path", None)
    return d
