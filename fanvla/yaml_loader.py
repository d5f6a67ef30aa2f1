"""Strict YAML for every configuration file fanvla reads: hardware.yaml, evaluation task files, calibration points.

PyYAML's safe loader (plain data only: nothing is ever unpickled or constructed from a tag), made strict:

- a key given twice in one mapping is an error naming the key and both lines (PyYAML keeps the last one
  silently, so a second ``safety:`` section used to replace the first);
- anchors and aliases (``&name`` / ``*name``) may expand the document to at most :data:`MAX_EXPANDED_VALUES`
  values, counted on the parsed node graph before anything is built or walked (an "alias bomb" of a few hundred
  bytes expands to billions of values); a recursive alias is refused; nesting is bounded too;
- :func:`excerpt` gives the bounded text of a value for error messages, whatever its size.

The models' checks (ranges, types) stay in ``fanvla/config.py``; :func:`boolean_numbers` finds the booleans given
where a model expects numbers (pydantic would read ``true`` as 1.0).
"""

from __future__ import annotations

import reprlib
import types
import typing
from collections.abc import Iterator
from typing import Any, Union

import yaml
from pydantic import BaseModel
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_EXPANDED_VALUES = 100_000  # hardware.yaml has about 150; a task file about 30
MAX_DEPTH = 64
EXCERPT_CHARS = 80
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlError(ValueError):
    """A configuration file is not usable YAML; the message names the file, the line and the problem."""


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxlist, shown.maxtuple, shown.maxdict = 3, 6, 6, 6
    shown.maxstring, shown.maxother, shown.maxlong = 60, 60, 40
    return shown


_REPR = _bounded_repr()


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, in time bounded whatever the value's size."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Explicit keys only: a key that overrides one merged in with "<<: *anchor" is YAML's intended use.
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            line = key_node.start_mark.line + 1
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {excerpt(key)} is given twice in one mapping (line {first_line[key]} and "
                                f"line {line}); each key may appear once: keep one and merge the two",
                    key_node.start_mark)
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, SequenceNode):
        yield from node.value
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield key
            yield value


def _check_expansion(root: Node) -> None:
    """Count the values the document expands to (an alias counts everything it points to, every time)."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: Node, depth: int) -> int:
        if isinstance(node, ScalarNode):
            return 1
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > MAX_DEPTH:
            raise YamlError(f"nested deeper than {MAX_DEPTH} levels (line {node.start_mark.line + 1})")
        if id(node) in in_progress:
            raise YamlError(f"an alias refers to a value that contains it (line {node.start_mark.line + 1}): "
                            f"a recursive structure is not allowed")
        in_progress.add(id(node))
        total = 1
        for child in _children(node):
            total += size(child, depth + 1)
            if total > MAX_EXPANDED_VALUES:
                raise YamlError(f"expands to more than {MAX_EXPANDED_VALUES:,} values through anchors and aliases "
                                f"(&name / *name, line {node.start_mark.line + 1}); a configuration file is far "
                                f"smaller: refusing it")
        in_progress.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root, 0)


def load_yaml(text: str | bytes, origin: str) -> Any:
    """Parse one YAML document strictly (see the module docstring); YamlError names ``origin`` (a path)."""
    loader = _StrictLoader(text)
    loader.name = origin  # error marks say 'in "<path>", line N'
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except YamlError as error:
        raise YamlError(f"{origin}: {error}") from None
    except yaml.YAMLError as error:
        raise YamlError(f"{origin} is not valid YAML: {error}") from None
    except RecursionError:
        raise YamlError(f"{origin}: nested too deeply to be a configuration file") from None
    finally:
        loader.dispose()


# ----------------------------------------------------------------------------------- booleans are not numbers
def boolean_numbers(data: Any, model: type[BaseModel], path: tuple[str | int, ...] = ()) -> list[str]:
    """Dotted keys where ``data`` has a boolean and ``model`` a number (int or float, also inside lists/tuples)."""
    if not isinstance(data, dict):
        return []
    found: list[str] = []
    for name, field in model.model_fields.items():
        if name in data:
            found += _booleans(data[name], field.annotation, (*path, name))
    return found


def _booleans(value: Any, annotation: Any, path: tuple[str | int, ...]) -> list[str]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _booleans(value, args[0], path)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return boolean_numbers(value, annotation, path)
    if annotation in (int, float):
        return [".".join(str(part) for part in path)] if isinstance(value, bool) else []
    if origin in (Union, types.UnionType):
        if bool in args:
            return []
        return [hit for arg in args if arg is not type(None) for hit in _booleans(value, arg, path)][:1]
    if origin in (list, tuple) and isinstance(value, list | tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            kinds = list(args)
        else:
            kinds = [args[0] if args else Any] * len(value)
        return [hit for index, (item, kind) in enumerate(zip(value, kinds, strict=False))
                for hit in _booleans(item, kind, (*path, index))]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return [hit for key, item in value.items() for hit in _booleans(item, args[1], (*path, key))]
    return []
