"""The registries a spec names things from, and the resolver of a spec's ``model:`` reference.

They live in the config layer so that a spec is validated against them without this layer
importing the implementations: each registry imports its built-in module the first time it is
read (see :class:`pairgraph.registry.Registry`), and users add their own with the decorators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pairgraph.registry import Registry

#: zoo models: ``@register_model`` in :mod:`pairgraph.zoo` (entries are ``ModelEntry``)
MODELS: Registry[Any] = Registry("model", builtins=["pairgraph.zoo.vision", "pairgraph.zoo.sequence"])
#: ``prefix:`` model sources (``torchvision``, ``python`` for ``package.module:factory``): ref → ``ModelEntry``
MODEL_SOURCES: Registry[Any] = Registry("model source", builtins=["pairgraph.zoo.sources", "pairgraph.zoo.hf"])
#: mappers ``(guide graph, target graph, **options) -> Correspondence``
MAPPERS: Registry[Any] = Registry("mapper", builtins=["pairgraph.compiler.mapping"])
#: similarity measures (instances of ``pairgraph.core.similarity.Measure``)
MEASURES: Registry[Any] = Registry("measure", builtins=["pairgraph.core.similarity"])
#: guidance objectives, one per ``guidance.mode`` (``pairgraph.core.loss.Objective`` subclasses)
OBJECTIVES: Registry[Any] = Registry("guidance mode", builtins=["pairgraph.core.objectives"])
#: tasks (``Task`` subclasses with an ``Options`` model)
TASKS: Registry[Any] = Registry("task", builtins=["pairgraph.tasks"])
#: optimizers ``(train section, parameters) -> torch.optim.Optimizer``
OPTIMIZERS: Registry[Any] = Registry("optimizer", builtins=["pairgraph.training.optim"])


#: folders a spec's ``package.module:factory`` is also imported from (after sys.path): the working
#: directory and the folder of every spec file loaded (see :func:`add_import_root`)
IMPORT_ROOTS: list[Path] = []


def add_import_root(folder: str | Path) -> None:
    """Let ``package.module:factory`` references find modules in ``folder`` (a spec file's folder)."""
    folder = Path(folder).resolve()
    if folder not in IMPORT_ROOTS:
        IMPORT_ROOTS.append(folder)


def resolve_model(ref: str) -> Any:
    """The ``ModelEntry`` a spec's ``model:`` names: a zoo name, ``torchvision:<name>`` or ``package.module:factory``."""
    if ":" in ref:
        prefix = ref.split(":", 1)[0]
        return MODEL_SOURCES.get(prefix if prefix in MODEL_SOURCES else "python")(ref)
    return MODELS.get(ref)
