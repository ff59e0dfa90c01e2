"""Reading YAML the one way pairgraph does: ``safe_load`` only, line numbers kept, duplicate keys refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pairgraph.errors import SpecError, first_line, shorten


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


#: the largest YAML file pairgraph reads (a spec is a few KB, the paper's study file 31 KB; this keeps
#: every accepted file fast to parse)
MAX_YAML_BYTES = 64 * 1024
#: the most nodes a YAML document may expand to, aliases counted as often as they are used (an alias
#: "bomb" of a few hundred bytes expands to billions); a spec has a few hundred
MAX_YAML_NODES = 100_000


def expanded_size(root: yaml.Node | None, limit: int = MAX_YAML_NODES) -> int:
    """Nodes in the document with every alias expanded, counted in time linear in the distinct nodes;
    ``limit + 1`` as soon as it exceeds ``limit``. A node that contains itself raises :class:`ValueError`."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ValueError("an anchor is used inside itself")
        open_nodes.add(key)
        children = [c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        total = 1
        for child in children:
            total = min(total + size(child), limit + 1)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return 0 if root is None else size(root)


def duplicate_key(node: yaml.Node | None, seen_nodes: set[int] | None = None) -> tuple[str, int, int] | None:
    """The first key written twice in one YAML mapping (safe_load would silently keep the last); each
    node is looked at once, however many aliases name it."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if node is None or id(node) in seen_nodes:
        return None
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                line = k.start_mark.line + 1
                if k.value in seen:
                    return k.value, seen[k.value], line
                seen[k.value] = line
            found = duplicate_key(v, seen_nodes)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            found = duplicate_key(v, seen_nodes)
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
        with open(p, "rb") as f:  # bounded: a device or pipe (/dev/zero) has no size to check first
            raw = f.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise SpecError(f"{p} is over the {MAX_YAML_BYTES // 1024} KiB a {what} may have",
                            f"a {what} is a few KB of YAML: check that this is the file you meant")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p}: not UTF-8 text (byte {e.start})", f"save the {what} as UTF-8 YAML") from None
    except OSError as e:
        raise SpecError(f"cannot read {what} file {p}: {e.strerror or e}", "check the file's permissions") from None
    return parse_yaml(text, str(p))


def parse_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """YAML text as (data, root node), read as :func:`read_yaml` reads a file; errors name ``source`` and the line."""
    if len(text) > MAX_YAML_BYTES:
        raise SpecError(f"{source} holds {len(text):,} characters, over the {MAX_YAML_BYTES // 1024} KiB a YAML "
                        "document may have", "a spec is a few KB of YAML: check that this is the text you meant")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_size(root, source)
        data = _construct(root)
    except RecursionError:
        raise SpecError(f"{source}: the YAML is nested too deeply", "a spec nests a few levels: flatten it") from None
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


def _construct(root: yaml.Node | None) -> Any:
    """The data of a composed document, built as ``safe_load`` builds it (without parsing the text again)."""
    if root is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _check_size(root: yaml.Node | None, source: str) -> None:
    try:
        n = expanded_size(root)
    except ValueError:
        raise SpecError(f"{source}: an anchor (&name) is used inside itself", "remove the recursive alias") from None
    if n > MAX_YAML_NODES:
        raise SpecError(f"{source}: the YAML expands to over {MAX_YAML_NODES:,} nodes through its aliases (*name)",
                        "write the spec without nested aliases; a spec has a few hundred nodes")


def parse_scalar(raw: str) -> Any:
    """A command-line value parsed as a YAML scalar or list (``3e-4``, ``true``, ``[1, 2]``); else the text."""
    try:
        if not raw:
            return None
        _check_size(yaml.compose(raw, Loader=yaml.SafeLoader), f"the value {shorten(raw, 40)!r}")
        return yaml.safe_load(raw)
    except RecursionError:
        raise SpecError(f"the value {shorten(raw, 40)!r} is nested too deeply", "write a plain value") from None
    except yaml.YAMLError:
        return raw
