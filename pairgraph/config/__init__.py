"""L1 — the spec language: YAML read with line numbers and duplicate keys refused, the pydantic
``PairSpec``, and the registries its names are checked against (without importing implementations)."""

from pairgraph.config.loading import apply_overrides, as_spec, load_spec, parse_spec
from pairgraph.config.names import (
    MAPPERS,
    MEASURES,
    MODEL_SOURCES,
    MODELS,
    OBJECTIVES,
    OPTIMIZERS,
    TASKS,
    resolve_model,
)
from pairgraph.config.spec import (
    PRETRAINED,
    TRAIN,
    UNTRAINED,
    GuideSpec,
    LayerSelection,
    PairSpec,
    TrainSpec,
    json_schema,
    with_defaults,
)
from pairgraph.config.yaml_io import node_line, read_yaml

__all__ = [
    "MAPPERS", "MEASURES", "MODELS", "MODEL_SOURCES", "OBJECTIVES", "OPTIMIZERS", "PRETRAINED", "TASKS", "TRAIN", "UNTRAINED", "GuideSpec",
    "LayerSelection", "PairSpec", "TrainSpec", "apply_overrides", "as_spec", "json_schema", "load_spec", "node_line",
    "parse_spec", "read_yaml", "resolve_model", "with_defaults",
]
