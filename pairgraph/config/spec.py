"""The spec language: a pydantic ``PairSpec`` loaded from YAML with ``yaml.safe_load`` only.

Every field has a default that serves, so a spec can be three lines long. Validation errors
name the file, the line (from the YAML node marks) and the dotted field, and say how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from pairgraph.config.names import MAPPERS, MEASURES, OPTIMIZERS, TASKS, resolve_model, resolve_objective
from pairgraph.errors import PairgraphError, SpecError
from pairgraph.paths import NAME_PATTERN

#: ``guide.weights`` values that are not a checkpoint path: a seeded init, or train the guide first
UNTRAINED, TRAIN, PRETRAINED = "untrained", "train", "pretrained"


class _Strict(BaseModel):
    # allow_inf_nan=False: an lr of .inf or .nan is a typo, not a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _checked_by(lookup: Callable[[str], Any]) -> Any:
    """A name kept as written once ``lookup`` (a registry's, with did-you-mean; a resolver's) has found it."""
    return Annotated[str, AfterValidator(lambda v: (lookup(v), v)[1])]


ModelRef, MapperName, MeasureName = _checked_by(resolve_model), _checked_by(MAPPERS.get), _checked_by(MEASURES.get)
ObjectiveRef, OptimizerName = _checked_by(resolve_objective), _checked_by(OPTIMIZERS.get)


#: the most globs a layer selection may list (each is matched against every module: a bound on validation time)
MAX_GLOBS = 1000


class LayerSelection(_Strict):
    """Which modules of a network become tap points.

    Default: the layers the paper taps — modules with weights (conv, linear, RNN/LSTM/GRU,
    normalisation) and transformer blocks — minus the output head (as the paper's code drops
    the last tapped layer).
    """

    include: list[str] = Field(default_factory=lambda: ["*"], max_length=MAX_GLOBS,
                               description="Qualified-name globs to keep, e.g. 'blocks.*'.")
    exclude: list[str] = Field(default_factory=list, max_length=MAX_GLOBS, description="Qualified-name globs to drop.")
    types: list[str] | None = Field(
        default=None,
        description="Module class names to tap (e.g. [Linear, Conv2d]); null = pairgraph's default tap types.",
    )
    exclude_types: list[str] = Field(default_factory=list, description="Module class names never to tap.")
    leaf_types: list[str] = Field(
        default_factory=list,
        description="Module class names (short or qualified) to treat as single layers: not traced into, and tapped "
        "(e.g. [Block] for a timm ViT's blocks, [GPT2Block]).",
    )
    drop_output: bool = Field(default=True, description="Drop the last tap when it produces the network's output.")
    preset: Literal["default", "paper"] = Field(
        default="default",
        description="default: the types above, BatchNorm included, the output head dropped. paper: the authors' "
        "published selection exactly — every module (nested ones too) of type Conv2d, Linear, AdaptiveAvgPool2d, "
        "LSTM, RNN, TransformerDecoderLayer, LayerNorm or MultiheadAttention, no BatchNorm, the last one dropped "
        "(found with hooks). Example: preset: paper.",
    )
    provider: Literal["auto", "fx", "timm", "hooks"] = Field(
        default="auto",
        description="How tap points are found: fx (torch.fx, the whole data flow), timm (timm's forward_intermediates: "
        "the model's feature levels), hooks (forward hooks on modules and whole blocks, in call order); auto = fx, "
        "else timm where the model has forward_intermediates, else hooks. Example: provider: timm.",
    )


class Normalization(_Strict):
    mean: list[float] = Field(description="Per-channel mean, in [0, 1] pixel units (e.g. ImageNet's [0.485, 0.456, 0.406]).")
    std: list[float] = Field(description="Per-channel standard deviation, in [0, 1] pixel units.")

    @model_validator(mode="after")
    def _positive_std(self) -> Normalization:
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise SpecError("input.normalize needs as many means as standard deviations, all deviations > 0",
                            "write e.g. normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}")
        return self


class InputTransform(_Strict):
    """How one network sees the task's images: the same batch (and augmentation) as the other, viewed larger
    or normalized differently. Part of the network's forward, so tracing, the guide cache and every
    measurement see it too."""

    resize: tuple[int, int] | None = Field(
        default=None, description="Resize the batch to (H, W) (bilinear, antialiased); the model is built for "
        "that size. One number is a square. Example: resize: [224, 224] or resize: 224.")
    normalize: Normalization | None = Field(
        default=None, description="Normalize with this mean/std instead of the task's (pairgraph undoes the task's "
        "first). Example: normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}.")

    @field_validator("resize", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) and not isinstance(v, bool) else v


class NetworkSpec(_Strict):
    model: ModelRef = Field(description="A zoo name, 'torchvision:<name>', or 'package.module:factory' (imports and runs it).")
    args: dict[str, Any] = Field(default_factory=dict, description="Factory keyword arguments; 'preset' picks a zoo preset.")
    layers: LayerSelection = Field(default_factory=LayerSelection)
    output: str | int | None = Field(
        default=None,
        description="Which of forward's outputs are the logits: a key of a dict or ModelOutput, or an index of a "
        "tuple; null = the tensor itself, a 'logits' entry, or the first tensor.",
    )
    inputs: dict[str, Literal["input", "mask"]] = Field(
        default_factory=dict,
        description="Keyword inputs of forward and what feeds each: the task's input, or its padding mask (1 at real "
        "positions, 0 at padding: what transformers call attention_mask, and the mask the similarity uses). Empty = "
        "forward(x) takes the task's input alone. Example: {input_ids: input, attention_mask: mask}.",
    )
    input: InputTransform | None = Field(
        default=None,
        description="Image tasks: this network sees the batch resized and/or normalized differently (e.g. a guide "
        "fed 224 px as the authors' ResNet-18 guide was). Example: input: {resize: [64, 64]}.",
    )


class GuideSpec(NetworkSpec):
    model: ModelRef = "resnet18"
    weights: str = Field(
        default="untrained",
        description="'untrained' (seeded init), 'train' (train the guide on the task first, cached), 'pretrained' "
        "(the model source's own weights: timm's, transformers' from_pretrained(args.hf_name), torchvision's "
        "DEFAULT), or a checkpoint path.",
    )
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="With weights: train — train-section fields for the guide's own training (e.g. {lr: 1e-3, "
        "steps: 2000}); the rest comes from the spec's train section. Keys the cached guide.",
    )

    @field_validator("train")
    @classmethod
    def _train_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(TrainSpec.model_fields))
        if unknown:
            raise ValueError(f"unknown train field(s) {', '.join(unknown)} for the guide's training")
        TrainSpec.model_validate(v)
        return v

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint file ``weights`` names, or None for ``untrained``/``train``."""
        return None if self.weights in (UNTRAINED, TRAIN, PRETRAINED) else self.weights

    @field_validator("weights")
    @classmethod
    def _checkpoint_exists(cls, v: str) -> str:
        if v not in (UNTRAINED, TRAIN, PRETRAINED):
            p = Path(v).expanduser()
            if not p.exists():
                raise ValueError(f"checkpoint file {v!r} not found")
            if p.is_dir():
                raise ValueError(f"checkpoint {v!r} is a directory, not a file")
        return v


class TargetSpec(NetworkSpec):
    model: ModelRef = "deep_fcn"


class MappingSpec(BaseModel):
    """The mapper and its options (extra keys are passed to the mapper)."""

    model_config = ConfigDict(extra="allow")
    kind: MapperName = Field(
        default="uniform",
        description="uniform (paper Algorithm 1) | depth (nearest relative depth) | learned (order-preserving assignment "
        "maximising measured similarity less depth_prior × relative-depth gap; options batches, batch_size, "
        "warmup_steps, monotone, measure, depth_prior) | explicit "
        "(by hand: pairs: [[guide_glob, target_glob, weight], ...]); docs/mapping.md",
    )

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SimilaritySpec(_Strict):
    measure: MeasureName = Field(default="cka", description="cka | debiased_cka | rsa")
    sequence: Literal["flatten", "token", "position"] = Field(
        default="flatten", description="How sequence taps (b, T, d) become matrices: per-sample flatten (paper), per-token, per-position."
    )
    mask_padding: bool = Field(default=True, description="Keep padded positions out of the similarity.")
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        default="fp32",
        description="Precision of the similarity's matrix products only (the grams and the score's products, "
        "forward and backward); their results, and everything else, stay fp32. fp32: exact as ever; tf32: TF32 "
        "tensor cores for those products on CUDA (fp32 elsewhere); bf16: operands cast to bf16, products "
        "accumulated and returned in fp32. Independent of train.precision (the networks' autocast). "
        "Example: precision: bf16.",
    )


class GuidanceSpec(_Strict):
    mode: ObjectiveRef = Field(
        default="guidance", description="guidance (CKA alignment, the paper), baseline (no guide), distill (logit "
        "distillation), fitnets (a learned linear / 1×1 projector from each mapped target tap to its guide tap, "
        "MSE; FitNets' hints), repa (an MLP projector, 1 − cosine per token; REPA). The projectors train with "
        "the target and are saved beside it, never in its weights. Or your own objective: a name registered "
        "with @OBJECTIVES.register, or 'package.module:ClassName' (an Objective subclass; imports and runs it, "
        "found as a model factory is). Example: mode: repa, projector_dim: 512.")
    projector_dim: int = Field(default=2048, ge=1, description="Hidden width of repa's MLP projector (REPA: 2048). "
                               "Example: projector_dim: 512.")
    weight: float = Field(default=1.0, ge=0, description="Weight of the summed alignment loss (the paper uses 1).")
    until_step: int | None = Field(default=None, ge=0, description="Guide only for the first N steps (paper §5.5), then task loss alone.")
    reduce: Literal["sum", "mean"] = Field(
        default="sum",
        description="How the layer terms combine: sum (the paper's Σ(1 − CKA)) or mean (weighted mean over the "
        "mapped pairs, so one weight means the same for pairs of different depth). Example: reduce: mean.",
    )
    schedule: Literal["constant", "linear", "cosine"] = Field(
        default="constant",
        description="The alignment weight over training: constant, or a linear or cosine decay from weight to 0 "
        "at step schedule_steps (a soft until_step). Example: schedule: cosine, schedule_steps: 2000.",
    )
    schedule_steps: int | None = Field(default=None, ge=1, description="The step where a decaying schedule reaches 0. "
                                          "Example: schedule_steps: 2000.")
    balance: Literal["none", "grad_norm"] = Field(
        default="none",
        description="grad_norm: scale the alignment term each step by ‖∇task‖ / ‖∇alignment‖ on a reference "
        "parameter of the target (VA-VAE's / VQGAN's adaptive weight: (‖g_task‖ / (‖g_align‖ + 1e-4)) clamped to "
        "[0, 1e4], not backpropagated), so neither loss swamps the other. Example: balance: grad_norm.",
    )
    balance_parameter: str | None = Field(
        default=None,
        description="The target parameter grad_norm compares gradients on (a state-dict name, e.g. "
        "blocks.15.linear.weight); default: the weight of the last mapped target tap's module.",
    )
    guide_input: Literal["same", "noise"] = Field(default="same", description="Feed the guide the batch or noise (paper appendix E).")
    noise: Literal["paper", "code"] = Field(default="paper", description="With guide_input: noise, which noise: "
        "paper — N(0, 1), appendix E's text; code — clamp(N(0, 1) + 0.1·N(0, 1), 0, 1), what the authors' code feeds "
        "(two independent draws). Real-valued inputs only. Example: noise: code.")
    temperature: float = Field(default=4.0, gt=0, description="Distillation temperature (mode: distill).")
    guide_bn: Literal["eval", "batch"] = Field(
        default="eval", description="Guide normalisation: eval (running stats) or batch statistics (never updated)."
    )
    cache_guide: bool | None = Field(
        default=None,
        description="Run the frozen guide once over the training set and keep its taps (rows, or the N×N gram "
        "of wide taps) instead of running it every step. null (default): on whenever that is exact (mode "
        "guidance, guide_input same, guide_bn eval, no augmentation, flatten sequences, one process) and the run "
        "shows the guide at least one pass of the training set, with a one-line notice; true: always (refused "
        "where inexact); false: never. Costs 4·N·Σ min(d, N) bytes (docs/performance.md). Example: "
        "cache_guide: false.",
    )
    cache_max_gb: float = Field(default=4.0, gt=0, description="Refuse a guide cache larger than this (GiB).")

    @model_validator(mode="after")
    def _noise_is_fed(self) -> GuidanceSpec:
        if self.noise != "paper" and self.guide_input != "noise":
            raise SpecError(f"guidance.noise {self.noise} applies only to a noise-fed guide",
                            "add guidance.guide_input: noise, or drop guidance.noise")
        return self

    @model_validator(mode="after")
    def _schedule_has_an_end(self) -> GuidanceSpec:
        if self.schedule != "constant" and self.schedule_steps is None:
            raise SpecError(f"guidance.schedule {self.schedule} needs the step where the weight reaches 0",
                            "add guidance.schedule_steps: N")
        return self


class ScheduleSpec(_Strict):
    """The learning rate over optimizer steps: a factor f(s) of ``train.lr`` at step s (from 0).

    With ``warmup`` W, steps s < W use lr·(s+1)/(W+1); after it, with t = s − W and T = total − W:
    ``constant`` f = 1; ``step`` f = gamma^⌊t/every⌋; ``cosine`` f = m + (1 − m)·(1 + cos(π·t/T))/2,
    m = min_lr/lr, so the lr reaches min_lr as the last step completes (torch's CosineAnnealingLR).
    """

    kind: Literal["constant", "step", "cosine"] = Field(
        default="constant", description="constant (the default: train.lr throughout) | step | cosine; a bare name "
        "(schedule: cosine) is {kind: cosine}.")
    warmup: int = Field(default=0, ge=0, description="Linear warmup over the first N optimizer steps: step s (from 0) "
                        "uses lr·(s+1)/(N+1); the schedule starts after it. Must be below the run's step count.",
                        examples=[100])
    every: int | None = Field(default=None, ge=1, description="kind step (required): multiply the lr by gamma every "
                              "N optimizer steps after the warmup.", examples=[1000])
    gamma: float = Field(default=0.1, gt=0, description="kind step: the factor applied every `every` steps.",
                         examples=[0.1])
    min_lr: float = Field(default=0.0, ge=0, description="kind cosine: the lr the decay reaches at the last step.",
                          examples=[1e-5])

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _options_fit_the_kind(self) -> ScheduleSpec:
        if self.kind == "step" and self.every is None:
            raise SpecError("a step schedule needs every: N (steps between lr drops)",
                            "write schedule: {kind: step, every: 1000, gamma: 0.1}")
        fits = {"every": "step", "gamma": "step", "min_lr": "cosine"}
        for name, kind in fits.items():
            if self.kind != kind and getattr(self, name) != ScheduleSpec.model_fields[name].default:
                raise SpecError(f"{name} applies to schedule kind {kind}, not {self.kind}",
                                f"remove {name} or set kind: {kind}")
        return self


class TrainSpec(_Strict):
    optimizer: OptimizerName = Field(default="adamw", description="adamw | adam | sgd, or a name registered in OPTIMIZERS.")
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, description="SGD momentum.")
    grad_clip: float | None = Field(default=None, gt=0, description="Clip the gradient norm to this value.")
    batch_size: int = Field(default=256, ge=1, description="Examples per forward pass (a micro-batch when accumulate "
                            "> 1). The paper's batch size is 256.")
    accumulate: int = Field(
        default=1, ge=1, examples=[4],
        description="Gradient accumulation: each optimizer step sums the gradients of N micro-batches of batch_size "
        "examples, each loss divided by N, so the effective batch is N × batch_size. The alignment loss (CKA, a batch "
        "statistic) is computed over each micro-batch, not over the effective batch (README).")
    schedule: ScheduleSpec = Field(
        default_factory=ScheduleSpec, examples=["cosine", {"kind": "step", "every": 1000, "gamma": 0.1, "warmup": 0}],
        description="Learning-rate schedule over optimizer steps: constant (default) | step | cosine, with an "
        "optional linear warmup; e.g. {kind: step, every: 1000, gamma: 0.1} or cosine.")
    epochs: int | None = Field(default=None, ge=1, description="Epochs to train (ignored when steps is set).")
    steps: int | None = Field(default=None, ge=1, description="Optimizer steps to train; default 1 epoch when neither is set.")
    eval_every: int = Field(default=100, ge=1, description="Evaluate on the validation split every N optimizer steps.")
    eval_batches: int | None = Field(default=None, ge=1,
        description="Validate on N batches of a fixed random subset of the validation split (None = all of it); "
        "the test split is always evaluated whole.")
    checkpoint_every: int | None = Field(default=None, ge=1, description="Checkpoint every N optimizer steps (default: each evaluation).")
    seed: int = Field(default=0, ge=0, lt=2**31, description="Seed of the run (0 ≤ seed < 2**31).")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_workers: int = Field(default=0, ge=0)
    log: list[Literal["tensorboard", "wandb"]] = Field(default_factory=lambda: ["tensorboard"], examples=[["tensorboard", "wandb"]],
        description="Where the scalars of metrics.jsonl also go (metrics.jsonl is always written): tensorboard "
        "(runs/<name>/<id>/tb) and/or wandb (Weights & Biases, pip install 'pairgraph[wandb]'; project from "
        "$WANDB_PROJECT, default 'pairgraph'). Does not change what a run computes.")
    log_every: int = Field(default=10, ge=1,
        description="Read the steps' losses off the device every N optimizer steps (and at every evaluation, "
        "checkpoint and the last step): metrics.jsonl still gets one row per step, the NaN check still names the "
        "first non-finite step, but on a GPU the host waits for the device once per N steps, not every step. 1 = "
        "every step. Does not change what a run computes.")
    compile: bool = Field(default=False, description="Run the alignment under torch.compile (docs/performance.md): CUDA graphs "
                          "on a GPU; eager, with one line, where it cannot compile. Same losses within 1e-5.")

    @field_validator("log", mode="before")
    @classmethod
    def _log_list(cls, v: Any) -> Any:
        v = [v] if isinstance(v, str) else v
        return list(dict.fromkeys(v)) if isinstance(v, list) else v

    @model_validator(mode="after")
    def _warmup_within_the_run(self) -> TrainSpec:
        if self.steps is not None and self.schedule.warmup >= self.steps:
            raise SpecError(f"schedule.warmup ({self.schedule.warmup}) must be below train.steps ({self.steps})",
                            "shorten the warmup or train for more steps")
        if self.schedule.min_lr > self.lr:
            raise SpecError(f"schedule.min_lr ({self.schedule.min_lr}) is above train.lr ({self.lr})",
                            "a cosine schedule decays: set min_lr below lr")
        return self

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise SpecError(f"unknown device {v!r}", "use auto, cpu, cuda, cuda:N or mps")
        return v


class PairSpec(_Strict):
    """A guide/target pair and everything needed to train it."""

    name: str = Field(default="pair", pattern=NAME_PATTERN, description="Run name (folder-safe).")
    task: dict[str, Any] = Field(default_factory=lambda: {"kind": "copy_paste"}, description="Task 'kind' and its options.")
    guide: GuideSpec = Field(default_factory=GuideSpec)
    target: TargetSpec = Field(default_factory=TargetSpec)
    mapping: MappingSpec = Field(default_factory=MappingSpec)
    similarity: SimilaritySpec = Field(default_factory=SimilaritySpec)
    guidance: GuidanceSpec = Field(default_factory=GuidanceSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)

    @field_validator("task")
    @classmethod
    def _valid_task(cls, v: dict[str, Any]) -> dict[str, Any]:
        kind = v.get("kind", "copy_paste")
        if not isinstance(kind, str):
            raise SpecError(f"task kind must be a name, got {kind!r}", "use one of " + ", ".join(TASKS))
        task_cls = TASKS.get(kind)
        return task_cls.Options.model_validate({**v, "kind": kind}).model_dump(mode="json")

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self, *parts: str) -> str:
        """A short hash of the named top-level sections (all when none): keys caches."""
        data = self.resolved()
        if parts:
            data = {p: data[p] for p in parts}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored resolved spec with the fields added since it was written, at their defaults.

    New spec fields default to what pairgraph computed before they existed, so a run stored by an
    older version differs from today's spec only where the user changed something. A stored spec
    that no longer validates is returned as it is (its differences are then reported field by field).
    """
    try:
        return PairSpec.model_validate(stored).resolved()
    except (ValueError, PairgraphError):
        return stored


def json_schema() -> dict[str, Any]:
    """JSON Schema of the spec language, with each registered task's options as a oneOf."""
    schema = PairSpec.model_json_schema()
    train = schema["$defs"]["TrainSpec"]["properties"]  # a bare name is accepted too: schedule: cosine, log: wandb
    kinds = {"enum": list(get_args(ScheduleSpec.model_fields["kind"].annotation)), "type": "string"}
    train["schedule"]["anyOf"] = [{"$ref": train["schedule"].pop("$ref")}, kinds]
    log = train["log"]
    log["anyOf"] = [{"type": log.pop("type"), "items": log["items"]}, log.pop("items")]
    schema["properties"]["task"] = {
        "description": "Task 'kind' and its options.",
        "oneOf": [cls.Options.model_json_schema() for _, cls in TASKS.items()],
    }
    return schema
