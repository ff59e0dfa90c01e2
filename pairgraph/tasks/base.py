"""The task base class, the options base, :func:`get_task`, and the loss and prediction helpers
every task family shares. Imports no task family: the families import this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor
from torch.utils.data import Dataset

from pairgraph.config.names import TASKS
from pairgraph.errors import PairgraphError, SpecError

IGNORE_INDEX = -100
LossKind = Literal["ce", "bce", "mse"]
LOSS_DESCRIPTION = (
    "Task loss: 'ce' cross-entropy, 'bce' binary cross-entropy with one logit per class decision, "
    "'mse' mean squared error between raw logits and one-hot targets (paper appendix G)."
)
#: the fix of an error about missing offline data
DATA_HINT = "set task.data_dir or PAIRGRAPH_DATA to the folder holding it"


# ----------------------------------------------------------------------------------------------
# losses and predictions shared by tasks
# ----------------------------------------------------------------------------------------------


def class_loss(logits: Tensor, y: Tensor, kind: str) -> Tensor:
    """Mean loss of (N, C) logits against (N,) int targets (C == 1: binary, one logit)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    c = logits.shape[-1]
    if kind == "ce":
        return F.cross_entropy(logits.float(), y)
    if c == 1:
        target = y.to(logits.dtype)
        out = logits[:, 0]
    else:
        target = F.one_hot(y, c).to(logits.dtype)
        out = logits
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(out.float(), target.float())
    if kind == "mse":
        return F.mse_loss(out.float(), target.float())
    raise PairgraphError(f"unknown loss {kind!r}", "use 'ce', 'bce' or 'mse'")


def predicted_class(logits: Tensor) -> Tensor:
    """Predicted class of (N, C) logits; a single logit predicts 1 when positive."""
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).long()
    return logits.argmax(-1)


class OptionsBase(BaseModel):
    """Base of every task's ``Options``: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------------------------
# base class and construction
# ----------------------------------------------------------------------------------------------


class Task:
    """A task: its data, input kind, model arguments, loss and metrics.

    Subclasses set ``name``, ``Options``, ``input_kind``, ``primary_metric`` and
    ``higher_is_better`` and implement the data/loss methods. ``__init__`` must stay cheap.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = OptionsBase
    input_kind: ClassVar[str] = "tokens"
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, options: BaseModel | Mapping[str, Any] | None = None):
        if options is None:
            options = self.Options()
        elif isinstance(options, Mapping):
            options = _validate_options(self.Options, {"kind": self.name, **options})
        elif not isinstance(options, self.Options):
            options = _validate_options(self.Options, options.model_dump())
        self.options: Any = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"

    # -- to implement ---------------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def example_input(self, batch_size: int, device: str | torch.device = "meta") -> Tensor:
        raise NotImplementedError

    def datasets(self, seed: int) -> dict[str, Dataset]:
        raise NotImplementedError

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def metrics(self, logits: Tensor, y: Tensor) -> dict[str, tuple[float, int]]:
        raise NotImplementedError

    def pixel_normalization(self) -> tuple[list[float], list[float]] | None:
        """(mean, std) per channel that the task's image inputs were normalized with, in [0, 1] pixel units
        ((0, 1) when not normalized); None for a task whose inputs are not images."""
        return None

    def valid_mask(self, x: Tensor) -> Tensor | None:
        return None

    def noise_input(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    # -- defaults -------------------------------------------------------------------------------
    def derived_metrics(self, agg: dict[str, float]) -> dict[str, float]:
        """Metrics computed from the aggregated means (sum / count); default: unchanged."""
        return dict(agg)

    def _check_positions(self, logits: Tensor, y: Tensor) -> None:
        if tuple(logits.shape[:-1]) != tuple(y.shape):
            raise PairgraphError(
                f"task {self.name} expects logits of shape {tuple(y.shape)} + (classes,), got {tuple(logits.shape)}",
                "make the model emit one prediction per input position",
            )

    def _check_outputs(self, logits: Tensor, expected: int) -> None:
        if logits.shape[-1] != expected:
            raise PairgraphError(
                f"model outputs {logits.shape[-1]} values per prediction but task {self.name} "
                f"(loss={self.options.loss}) expects {expected}",
                f"build the model with the task's model_kwargs() (num_classes={expected})",
            )


def _validate_options(options_cls: type[BaseModel], data: Any) -> BaseModel:
    try:
        return options_cls.model_validate(data)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"task.{loc}: {err.get('msg')}" if loc else f"task: {err.get('msg')}")
        kind = data.get("kind") if isinstance(data, Mapping) else None
        raise SpecError(
            "; ".join(parts),
            f"see the options of task {kind!r} in the spec schema" if kind else None,
        ) from None


def get_task(options_or_dict: Task | BaseModel | Mapping[str, Any] | str) -> Task:
    """Build a task from a ``{"kind": ..., **options}`` mapping, an ``Options`` instance or a name."""
    if isinstance(options_or_dict, Task):
        return options_or_dict
    if isinstance(options_or_dict, str):
        return TASKS.get(options_or_dict)()
    if isinstance(options_or_dict, BaseModel):
        kind = getattr(options_or_dict, "kind", None)
        if kind is None:
            raise PairgraphError(f"{type(options_or_dict).__name__} is not task options", "pass a task's Options")
        return TASKS.get(kind)(options_or_dict)
    if isinstance(options_or_dict, Mapping):
        kind = options_or_dict.get("kind")
        if not kind:
            raise SpecError("task: missing 'kind'", "choose one of " + ", ".join(TASKS.names()))
        cls = TASKS.get(str(kind))
        return cls(_validate_options(cls.Options, dict(options_or_dict)))
    raise PairgraphError(f"cannot build a task from {type(options_or_dict).__name__}", "pass a mapping with 'kind'")
