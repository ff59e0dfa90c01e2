"""The registries a spec names things from, and the resolvers of a spec's ``model:`` and ``guidance.mode``.

They live in the config layer so that a spec is validated against them without this layer
importing the implementations: each registry imports its built-in module the first time it is
read (see :class:`pairgraph.registry.Registry`), and users add their own with the decorators.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from pairgraph.errors import PairgraphError, one_line
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
#: the class a ``package.module:ClassName`` guidance mode must subclass (named here, as the registries name
#: their built-ins: it lives in the core layer)
OBJECTIVE_BASE = ("pairgraph.core.loss", "Objective")
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


def import_reference(ref: str, what: str) -> Any:
    """The attribute ``package.module:name`` names, imported (and so run) from sys.path, then the working
    directory, then the folder of each spec file loaded (:data:`IMPORT_ROOTS`); ``what`` names it in errors."""
    mod_name, _, attr = ref.partition(":")
    if not (all(part.isidentifier() for part in mod_name.split(".")) and attr.isidentifier()):
        raise PairgraphError(f"{what} {ref!r} is not a reference 'package.module:name'",
                             "write the module's dotted path, a colon, and the name it defines")
    for root in (Path.cwd(), *IMPORT_ROOTS):
        if str(root) not in sys.path:
            sys.path.append(str(root))  # after sys.path: an installed package of the same name wins
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        inside = e.name is not None and not mod_name.startswith(e.name)  # the module imports something missing
        raise PairgraphError(
            f"cannot import module {mod_name!r} for {what} {ref!r} ({e})",
            f"install {e.name}, which {mod_name} imports" if inside else
            f"put {mod_name.split('.')[0]} in the working directory or beside the spec file, install it, "
            "or add its folder to PYTHONPATH",
        ) from None
    except Exception as e:  # noqa: BLE001 - a user module that fails while importing is one line, not a traceback
        raise PairgraphError(f"importing module {mod_name!r} for {what} {ref!r} failed: {one_line(e)}",
                             f"fix the error in {mod_name}") from None
    if not hasattr(module, attr):
        raise PairgraphError(f"module {mod_name!r} has no {attr!r} (for {what} {ref!r})",
                             f"name something {mod_name} defines, as 'package.module:name'")
    return getattr(module, attr)


def resolve_objective(mode: str) -> Any:
    """The objective class a spec's ``guidance.mode`` names: a registered name (``guidance``, …, or one a user
    registered with ``@OBJECTIVES.register``) or ``package.module:ClassName``, a subclass of ``Objective``."""
    if ":" not in str(mode):
        return OBJECTIVES.get(mode)
    cls = import_reference(mode, "guidance.mode")
    base = getattr(importlib.import_module(OBJECTIVE_BASE[0]), OBJECTIVE_BASE[1])
    if not (isinstance(cls, type) and issubclass(cls, base)):
        named = f"class {cls.__name__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise PairgraphError(f"guidance.mode {mode!r} names {named}, not a subclass of {'.'.join(OBJECTIVE_BASE)}",
                             "name a class written as class Mine(Objective), with from pairgraph.core.loss "
                             "import Objective")
    return cls
