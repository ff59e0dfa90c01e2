"""The spec language: a pydantic ``PairSpec`` loaded from YAML with ``yaml.safe_load`` only.

Every field has a default that serves, so a spec can be three lines long. Validation errors
name the file, the line (from the YAML node marks) and the dotted field, and say how to fix it.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pairgraph.errors import SpecError


class _Strict(BaseModel):
    # allow_inf_nan=False: an lr of .inf or .nan is a typo, not a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LayerSelection(_Strict):
    """Which modules of a network become tap points.

    Default: the layers the paper taps — modules with weights (conv, linear, RNN/LSTM/GRU,
    normalisation) and transformer blocks — minus the output head (as the paper's code drops
    the last tapped layer).
    """

    include: list[str] = Field(default_factory=lambda: ["*"], description="Qualified-name globs to keep, e.g. 'blocks.*'.")
    exclude: list[str] = Field(default_factory=list, description="Qualified-name globs to drop.")
    types: list[str] | None = Field(
        default=None,
        description="Module class names to tap (e.g. [Linear, Conv2d]); null = pairgraph's default tap types.",
    )
    exclude_types: list[str] = Field(default_factory=list, description="Module class names never to tap.")
    drop_output: bool = Field(default=True, description="Drop the last tap when it produces the network's output.")


class NetworkSpec(_Strict):
    model: str = Field(description="A zoo name, 'torchvision:<name>', or 'package.module:factory' (imports and runs it).")
    args: dict[str, Any] = Field(default_factory=dict, description="Factory keyword arguments; 'preset' picks a zoo preset.")
    layers: LayerSelection = Field(default_factory=LayerSelection)

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from pairgraph.zoo import resolve

        resolve(v)
        return v


class GuideSpec(NetworkSpec):
    model: str = "resnet18"
    weights: str = Field(
        default="untrained",
        description="'untrained' (seeded init), 'train' (train the guide on the task first, cached), or a checkpoint path.",
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

    @field_validator("weights")
    @classmethod
    def _checkpoint_exists(cls, v: str) -> str:
        if v not in ("untrained", "train"):
            p = Path(v).expanduser()
            if not p.exists():
                raise ValueError(f"checkpoint file {v!r} not found")
            if p.is_dir():
                raise ValueError(f"checkpoint {v!r} is a directory, not a file")
        return v


class TargetSpec(NetworkSpec):
    model: str = "deep_fcn"


class MappingSpec(BaseModel):
    """The mapper and its options (extra keys are passed to the mapper)."""

    model_config = ConfigDict(extra="allow")
    kind: str = Field(
        default="uniform",
        description="uniform (paper Algorithm 1) | depth (nearest relative depth) | learned (order-preserving assignment "
        "maximising measured similarity; options batches, batch_size, warmup_steps, monotone, measure; docs/mapping.md)",
    )

    @field_validator("kind")
    @classmethod
    def _known_mapper(cls, v: str) -> str:
        from pairgraph.mapping import MAPPERS

        MAPPERS.get(v)
        return v

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SimilaritySpec(_Strict):
    measure: str = Field(default="cka", description="cka | debiased_cka | rsa")
    sequence: Literal["flatten", "token", "position"] = Field(
        default="flatten", description="How sequence taps (b, T, d) become matrices: per-sample flatten (paper), per-token, per-position."
    )
    mask_padding: bool = Field(default=True, description="Keep padded positions out of the similarity.")

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, v: str) -> str:
        from pairgraph.similarity import MEASURES

        MEASURES.get(v)
        return v


class GuidanceSpec(_Strict):
    mode: Literal["guidance", "baseline", "distill"] = Field(
        default="guidance", description="guidance (CKA alignment), baseline (no guide), distill (logit distillation)."
    )
    weight: float = Field(default=1.0, ge=0, description="Weight of the summed alignment loss (the paper uses 1).")
    until_step: int | None = Field(default=None, ge=0, description="Guide only for the first N steps (paper §5.5), then task loss alone.")
    guide_input: Literal["same", "noise"] = Field(default="same", description="Feed the guide the batch or noise (paper appendix E).")
    temperature: float = Field(default=4.0, gt=0, description="Distillation temperature (mode: distill).")
    guide_bn: Literal["eval", "batch"] = Field(
        default="eval", description="Guide normalisation: eval (running stats) or batch statistics (never updated)."
    )
    cache_guide: bool = Field(
        default=False,
        description="Run the frozen guide once over the training set and keep its taps (rows, or the N×N gram "
        "of wide taps) instead of running it every step. Exact; needs mode guidance, guide_input same, "
        "guide_bn eval, no augmentation and flatten sequences. Costs 4·N·Σ min(d, N) bytes (docs/performance.md).",
    )
    cache_max_gb: float = Field(default=4.0, gt=0, description="Refuse a guide cache larger than this (GiB).")


class TrainSpec(_Strict):
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, description="SGD momentum.")
    grad_clip: float | None = Field(default=None, gt=0, description="Clip the gradient norm to this value.")
    batch_size: int = Field(default=256, ge=1, description="The paper's batch size is 256.")
    epochs: int | None = Field(default=None, ge=1, description="Epochs to train (ignored when steps is set).")
    steps: int | None = Field(default=None, ge=1, description="Optimizer steps to train; default 1 epoch when neither is set.")
    eval_every: int = Field(default=100, ge=1, description="Evaluate on the validation split every N steps.")
    eval_batches: int | None = Field(
        default=None, ge=1,
        description="Validate on N batches of a fixed random subset of the validation split (None = all of it); "
        "the test split is always evaluated whole.")
    checkpoint_every: int | None = Field(default=None, ge=1, description="Checkpoint every N steps (default: each evaluation).")
    seed: int = 0
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_workers: int = Field(default=0, ge=0)

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise SpecError(f"unknown device {v!r}", "use auto, cpu, cuda, cuda:N or mps")
        return v


class PairSpec(_Strict):
    """A guide/target pair and everything needed to train it."""

    name: str = Field(default="pair", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name (folder-safe).")
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
        from pairgraph.tasks import TASKS

        kind = v.get("kind", "copy_paste")
        if not isinstance(kind, str):
            raise SpecError(f"task kind must be a name, got {kind!r}", "use one of " + ", ".join(TASKS))
        task_cls = TASKS.get(kind)
        return task_cls.Options.model_validate({**v, "kind": kind}).model_dump(mode="json")

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self, *parts: str) -> str:
        """A short hash of the named top-level sections (all when none): keys caches."""
        import hashlib

        data = self.resolved()
        if parts:
            data = {p: data[p] for p in parts}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def json_schema() -> dict[str, Any]:
    """JSON Schema of the spec language, with each registered task's options as a oneOf."""
    from pairgraph.tasks import TASKS

    schema = PairSpec.model_json_schema()
    schema["properties"]["task"] = {
        "description": "Task 'kind' and its options.",
        "oneOf": [cls.Options.model_json_schema() for _, cls in TASKS.items()],
    }
    return schema


# ---------------------------------------------------------------- loading and error messages


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise SpecError(f"--set {dotted}: {k!r} is not a mapping", "set a leaf field such as train.lr=3e-4")
        node = nxt
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML scalars/lists)."""
    for item in overrides or []:
        if "=" not in item:
            raise SpecError(f"--set {item!r} has no '='", "write --set section.field=value, e.g. --set train.lr=3e-4")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        _set_path(data, key.strip(), value)
    return data


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    node, line = root, None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(key):
                    nxt, line = v, k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _field_names(model: type[BaseModel], loc: tuple[Any, ...], data: Any = None) -> list[str]:
    """Valid field names at ``loc`` (for 'did you mean' on unknown keys)."""
    if loc and loc[0] == "task" and len(loc) == 2:
        from pairgraph.tasks import TASKS

        task = data.get("task") if isinstance(data, dict) else None
        kind = task.get("kind", "copy_paste") if isinstance(task, dict) else "copy_paste"
        return list(TASKS.get(kind).Options.model_fields) if isinstance(kind, str) and kind in TASKS else []
    cur: Any = model
    for key in loc[:-1]:
        fields = getattr(cur, "model_fields", None)
        if not fields or key not in fields:
            return []
        ann = fields[key].annotation
        cur = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if cur is None:
            return []
    return list(getattr(cur, "model_fields", {}) or [])


def _describe(err: dict[str, Any], model: type[BaseModel], data: Any = None) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    field = ".".join(str(p) for p in loc) or "(spec)"
    kind = err["type"]
    if kind == "extra_forbidden":
        names = _field_names(model, loc, data)
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else ("valid fields: " + ", ".join(names) if names else "remove it")
        return f"{field}: unknown field", hint
    if kind == "missing":
        return f"{field}: required field missing", f"add '{loc[-1]}:' to the spec"
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("model_type", "model_attributes_type"):  # not "instance of TrainSpec": name no internals
        msg = "Input should be a mapping of fields"
    got = err.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
    return f"{field}: {msg}{shown}", _type_hint(kind, loc)


def _type_hint(kind: str, loc: tuple[Any, ...]) -> str:
    hints = {
        "int_parsing": "write a whole number",
        "int_type": "write a whole number",
        "int_from_float": "write a whole number",
        "finite_number": "write a finite number such as 3e-4",
        "bool_type": "write true or false",
        "model_type": "write a mapping (key: value lines)",
        "model_attributes_type": "write a mapping (key: value lines)",
        "float_parsing": "write a number such as 3e-4",
        "float_type": "write a number such as 3e-4",
        "bool_parsing": "write true or false",
        "literal_error": "use one of the allowed values",
        "dict_type": "write a mapping (key: value lines)",
        "list_type": 'write a YAML list, e.g. ["blocks.*"]',
        "tuple_type": "write a list such as [5, 10]",
        "string_type": "write a string",
        "greater_than": "use a larger value",
        "greater_than_equal": "use a larger value",
        "string_pattern_mismatch": "use letters, digits, '_', '-' or '.'",
    }
    if loc and loc[-1] == "weights":
        return "give an existing checkpoint path, 'untrained' or 'train'"
    return hints.get(kind, "see `pairgraph schema` for the allowed values")


def parse_spec(
    data: Any, source: str = "<spec>", overrides: list[str] | None = None, root_node: yaml.Node | None = None
) -> PairSpec:
    """Validate a spec mapping; raise a one-line :class:`SpecError` naming source, line and field."""
    from pairgraph.errors import PairgraphError

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a YAML mapping, got {type(data).__name__}", "start with 'name: my_pair'")
    data = apply_overrides(data, overrides)
    try:
        spec = PairSpec.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        first = errors[0]
        text, hint = _describe(first, PairSpec, data)
        line = _node_line(root_node, tuple(first["loc"])) if root_node is not None else None
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        where = f"{source}:{line}" if line else source
        cause = first.get("ctx", {}).get("error") if isinstance(first.get("ctx"), dict) else None
        if isinstance(cause, PairgraphError):
            field = ".".join(str(p) for p in first["loc"])
            raise SpecError(f"{where}: {field}: {cause.message}{more}", cause.hint) from None
        raise SpecError(f"{where}: {text}{more}", hint) from None
    _check_consistency(spec, source, root_node)
    return spec


def _check_consistency(spec: PairSpec, source: str, root_node: yaml.Node | None) -> None:
    """Checks across sections that would otherwise fail only deep inside training."""
    from pairgraph.similarity import get_measure

    measure = get_measure(spec.similarity.measure)
    bs = spec.train.batch_size
    # per-sample (flatten) and per-position rows have one row per example: the batch must hold
    # min_batch of them (per-token rows pool the batch's tokens, so a smaller batch can work)
    if spec.guidance.mode == "guidance" and spec.similarity.sequence != "token" and bs < measure.min_batch:
        line = _node_line(root_node, ("train", "batch_size")) if root_node is not None else None
        where = f"{source}:{line}" if line else source
        raise SpecError(
            f"{where}: train.batch_size: {bs} is too small for similarity.measure {measure.name!r}, "
            f"which needs at least {measure.min_batch} examples per batch",
            f"set train.batch_size >= {measure.min_batch} (the paper uses 256)",
        )


def _duplicate_key(node: yaml.Node | None) -> tuple[str, int, int] | None:
    """The first key written twice in one YAML mapping (safe_load would silently keep the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                line = k.start_mark.line + 1
                if k.value in seen:
                    return k.value, seen[k.value], line
                seen[k.value] = line
            found = _duplicate_key(v)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            found = _duplicate_key(v)
            if found:
                return found
    return None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> PairSpec:
    """Read and validate a YAML spec file (``yaml.safe_load``/``compose`` only — never arbitrary tags)."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"spec file {str(p)!r} not found", "check the path (specs live in specs/)")
    if p.is_dir():
        raise SpecError(f"{p} is a directory, not a spec file", "pass a .yaml file such as specs/rnn_from_transformer.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p}: not UTF-8 text (byte {e.start})", "save the spec as UTF-8 YAML") from None
    except OSError as e:
        raise SpecError(f"cannot read spec file {p}: {e.strerror or e}", "check the file's permissions") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{p}{line}: YAML syntax error: {problem}", "fix the YAML (indentation, ':' after keys, quotes)") from None
    dup = _duplicate_key(root)
    if dup:
        key, first, again = dup
        raise SpecError(f"{p}:{again}: key {key!r} appears twice (first on line {first})",
                        "keep one of them: YAML would silently use the last")
    return parse_spec(data, str(p), overrides, root)


def as_spec(spec: PairSpec | str | Path | dict[str, Any], overrides: list[str] | None = None) -> PairSpec:
    """Accept a PairSpec, a path to YAML, or a mapping."""
    if isinstance(spec, PairSpec):
        if overrides:
            return parse_spec(spec.resolved(), spec.name, overrides)
        return spec
    if isinstance(spec, dict):
        return parse_spec(dict(spec), "<dict>", overrides)
    return load_spec(spec, overrides)
