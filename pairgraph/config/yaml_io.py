"""Reading YAML the one way pairgraph does: ``safe_load`` only, line numbers kept, duplicate keys refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pairgraph.errors import SpecError, first_line


def node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
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


def where(source: str, root: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    """``source:line`` of ``loc`` when the YAML node gives a line, else ``source``."""
    line = node_line(root, loc) if root is not None else None
    return f"{source}:{line}" if line else source


def duplicate_key(node: yaml.Node | None) -> tuple[str, int, int] | None:
    """The first key written twice in one YAML mapping (safe_load would silently keep the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                line = k.start_mark.line + 1
                if k.value in seen:
                    return k.value, seen[k.value], line
                seen[k.value] = line
            found = duplicate_key(v)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            found = duplicate_key(v)
            if found:
                return found
    return None


def read_yaml(path: str | Path, what: str = "spec", example: str = "specs/rnn_from_transformer.yaml") -> tuple[Any, yaml.Node | None]:
    """Read a YAML file as (data, root node); every problem is a one-line :class:`SpecError` naming file and line."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"{what} file {str(p)!r} not found", f"check the path (e.g. {example})")
    if p.is_dir():
        raise SpecError(f"{p} is a directory, not a {what} file", f"pass a .yaml file such as {example}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p}: not UTF-8 text (byte {e.start})", f"save the {what} as UTF-8 YAML") from None
    except OSError as e:
        raise SpecError(f"cannot read {what} file {p}: {e.strerror or e}", "check the file's permissions") from None
    return parse_yaml(text, str(p))


def parse_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """YAML text as (data, root node), read as :func:`read_yaml` reads a file; errors name ``source`` and the line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or first_line(e) or "invalid YAML"
        raise SpecError(f"{source}{line}: YAML syntax error: {problem}",
                        "fix the YAML (indentation, ':' after keys, quotes)") from None
    dup = duplicate_key(root)
    if dup:
        key, first, again = dup
        raise SpecError(f"{source}:{again}: key {key!r} appears twice (first on line {first})",
                        "keep one of them: YAML would silently use the last")
    return data, root


def parse_scalar(raw: str) -> Any:
    """A command-line value parsed as a YAML scalar or list (``3e-4``, ``true``, ``[1, 2]``); else the text."""
    try:
        return yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        return raw
