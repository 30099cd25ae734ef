"""Reading spec text safely: bounded, non-blocking reads of the file, and a YAML loader that refuses
tags, duplicate keys, deep nesting and alias bombs. Every problem is a one-line ``SpecError``."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mpvgbench.errors import SpecError

MAX_SPEC_BYTES = 1_000_000


MAX_YAML_DEPTH = 64  # a spec nests a handful of levels
MAX_YAML_VALUES = 200_000  # values after alias expansion: a 10k-job spec needs a few thousand


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys, explicit tags and deep nesting."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        tag = getattr(event, "tag", None)
        if tag is not None and tag != "!" and not isinstance(event, yaml.AliasEvent):
            raise yaml.constructor.ConstructorError(
                None, None, f"the tag {tag} is not allowed (YAML tags are not allowed in specs)",
                event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` becomes once every alias is expanded (shared nodes memoised:
    linear in the document, however large the expansion)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # a cycle (an alias to an enclosing anchor) counts once, then is refused below
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def _construct_mapping(loader: _SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:  # explicit keys only: a key may override a `<<:` merge
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_SafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def read_yaml(text: str, source: str) -> Any:
    """Parse spec text; bounded in depth and in size after alias expansion (a 600-byte
    "billion laughs" would otherwise take minutes and gigabytes downstream)."""
    try:
        loader = _SafeLoader(text)  # the reader refuses control characters here already
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: {_yaml_problem(exc)}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_VALUES:
            raise SpecError(f"{source}: the YAML expands to over {MAX_YAML_VALUES:,} values "
                            "(nested aliases); write the spec out without them")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise SpecError(f"{source}: malformed YAML: nested too deeply (or an alias refers to "
                        "its own enclosing value)") from None
    finally:
        loader.dispose()


def unshared_copy(value: Any) -> Any:
    """A copy in which no two places share a dict or list: a YAML alias (``recipe: &r {...}``
    used again under ``model_overrides.M.recipe``) is one object after loading, and
    ``copy.deepcopy`` keeps it one, so ``--set recipe.epochs=1`` would change both places.
    Bounded: read_yaml refused documents over MAX_YAML_VALUES after alias expansion."""
    if isinstance(value, Mapping):
        return {key: unshared_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unshared_copy(item) for item in value]
    return value


def display_path(path: str | Path) -> str:
    """A path as one printable line: repr() when it holds a newline or another control character
    (a message built from it must stay one line)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def read_spec_bytes(path: str | Path, source: str) -> bytes:
    """The file's bytes, read without blocking and at most MAX_SPEC_BYTES + 1 of them: a FIFO,
    a terminal or /dev/zero named as a spec is refused instead of hanging or filling memory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise SpecError(f"{source}: no such spec file") from None
    except IsADirectoryError:
        raise SpecError(f"{source}: is a directory, not a spec file") from None
    except OSError as exc:
        raise SpecError(f"{source}: cannot read spec: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "is a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe, device or socket)"
        raise SpecError(f"{source}: {what}, not a spec file")
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            raise SpecError(f"{source}: cannot read spec: {exc.strerror or exc}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # control characters, binary content
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return (f"position {exc.position}: character {char!r} is not allowed "
                "(binary content or a control character); a spec is plain UTF-8 text")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    problem = " ".join(str(problem).split())
    if "could not determine a constructor" in problem:
        problem += " (YAML tags are not allowed in specs)"
    return f"{where}malformed YAML: {problem}"
