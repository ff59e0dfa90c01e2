"""Loading a spec: a YAML file or a dict, with ``--set`` overrides, into a validated :class:`PairSpec`;
errors name the file and line (or the ``--set``) they come from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pairgraph.config.messages import describe
from pairgraph.config.names import MEASURES, add_import_root, resolve_objective
from pairgraph.config.spec import PairSpec, TrainSpec
from pairgraph.config.yaml_io import parse_scalar, read_yaml, where
from pairgraph.errors import PairgraphError, SpecError, check_type

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
        _set_path(data, key.strip(), parse_scalar(raw))
    return data


def parse_spec(
    data: Any, source: str = "<spec>", overrides: list[str] | None = None, root_node: yaml.Node | None = None
) -> PairSpec:
    """Validate a spec mapping; raise a one-line :class:`SpecError` naming source, line and field."""
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
        text, hint = describe(first, PairSpec, data)
        at = _override_at(first["loc"], overrides) or where(source, root_node, tuple(first["loc"]))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        cause = first.get("ctx", {}).get("error") if isinstance(first.get("ctx"), dict) else None
        if isinstance(cause, PairgraphError):
            field = ".".join(str(p) for p in first["loc"])
            raise SpecError(f"{at}: {field}: {cause.message}{more}", cause.hint) from None
        raise SpecError(f"{at}: {text}{more}", hint) from None
    _check_consistency(spec, source, root_node)
    return spec


def _override_at(loc: tuple[Any, ...], overrides: list[str] | None) -> str | None:
    """``--set key=value`` when the failing field was set on the command line (not the file's line)."""
    dotted = ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))
    for item in reversed(overrides or []):
        key = item.partition("=")[0].strip()
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            return f"--set {item}"
    return None


def _check_consistency(spec: PairSpec, source: str, root_node: yaml.Node | None) -> None:
    """Checks across sections that would otherwise fail only deep inside training."""
    measure = MEASURES.get(spec.similarity.measure)
    bs = spec.train.batch_size
    # per-sample (flatten) and per-position rows have one row per example: the batch must hold
    # min_batch of them (per-token rows pool the batch's tokens, so a smaller batch can work)
    if resolve_objective(spec.guidance.mode).compares_similarity and spec.similarity.sequence != "token" and bs < measure.min_batch:
        raise SpecError(
            f"{where(source, root_node, ('train', 'batch_size'))}: train.batch_size: {bs} is too small for "
            f"similarity.measure {measure.name!r}, which needs at least {measure.min_batch} examples per batch",
            f"set train.batch_size >= {measure.min_batch} (the paper uses 256)",
        )
    if spec.guide.train:  # guide.train is checked alone by GuideSpec; here what it makes with the train section
        try:
            TrainSpec.model_validate({**spec.resolved()["train"], **spec.guide.train})
        except ValidationError as e:
            cause = e.errors()[0].get("ctx", {}).get("error")
            text = cause.message if isinstance(cause, PairgraphError) else describe(e.errors()[0], TrainSpec)[0]
            raise SpecError(f"{where(source, root_node, ('guide', 'train'))}: guide.train with the train section: "
                            f"{text}", "set those fields in guide.train too (it overrides the train section "
                            "field by field)") from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> PairSpec:
    """Read and validate a YAML spec file (``yaml.safe_load``/``compose`` only — never arbitrary tags)."""
    data, root = read_yaml(path, "spec")
    add_import_root(Path(path).parent)  # a factory beside the spec file is found, whatever the working directory
    return parse_spec(data, str(path), overrides, root)


def as_spec(spec: PairSpec | str | Path | dict[str, Any], overrides: list[str] | None = None) -> PairSpec:
    """Accept a PairSpec, a path to YAML, or a mapping."""
    check_type(spec, (PairSpec, str, os.PathLike, dict), "spec")
    check_type(overrides, (list, tuple, type(None)), "overrides (--set values)")
    if isinstance(spec, PairSpec):
        if overrides:
            return parse_spec(spec.resolved(), spec.name, overrides)
        return spec
    if isinstance(spec, dict):
        return parse_spec(dict(spec), "<dict>", overrides)
    return load_spec(spec, overrides)
