"""Pydantic validation errors as one line: the dotted field, what is wrong, and how to fix it."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from pairgraph.config.names import TASKS


def field_names(model: type[BaseModel], loc: tuple[Any, ...], data: Any = None) -> list[str]:
    """Valid field names at ``loc`` (for 'did you mean' on unknown keys)."""
    if loc and loc[0] == "task" and len(loc) == 2:
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


def describe(err: dict[str, Any], model: type[BaseModel], data: Any = None) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    field = ".".join(str(p) for p in loc) or "(spec)"
    kind = err["type"]
    if kind == "extra_forbidden":
        names = field_names(model, loc, data)
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
        "less_than": "use a smaller value",
        "less_than_equal": "use a smaller value",
        "too_long": "list fewer entries",
        "string_pattern_mismatch": "use up to 100 letters, digits, '_', '-' or '.', starting with a letter, digit or '_' (no '/', no '..')",
    }
    if loc and loc[-1] == "weights":
        return "give an existing checkpoint path, 'untrained' or 'train'"
    return hints.get(kind, "see `pairgraph schema` for the allowed values")
