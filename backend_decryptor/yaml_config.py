"""Load a YAML file into a pydantic model so that every error names file, line and field.

PyYAML's composer keeps the position of every node; pydantic reports the path (`loc`) of every
invalid field. Walking the node tree along that path gives the line to report, e.g.
    configs/backend.yaml:12: mqtt.port: Input should be less than or equal to 65535
"""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pydantic
import yaml

from protected_nn.config_words import explain_errors, parse_duration  # noqa: F401 (re-exported)

M = TypeVar("M", bound=pydantic.BaseModel)



class ConfigError(ValueError):
    """A configuration file that cannot be used; the message lists every problem with its line."""


def _node_at(node: yaml.Node | None, loc: tuple) -> yaml.Node | None:
    """The deepest node along `loc` that exists (a missing field points at its parent mapping)."""
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == str(key)), None)
            if child is None:
                return node
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return node
    return node


def _key_line(node: yaml.Node | None, loc: tuple) -> int | None:
    """Line of the *key* for an unknown/extra field (its value may sit on another line)."""
    parent = _node_at(node, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for k, _ in parent.value:
            if getattr(k, "value", None) == str(loc[-1]):
                return k.start_mark.line + 1
    return None


def _duplicate_keys(node: yaml.Node | None, path: tuple = ()) -> list[tuple[tuple, int, int]]:
    """(path, line, first line) of every key given twice: PyYAML silently keeps the last one,
    and an operator who sets a threshold twice must be told which one counts."""
    found: list[tuple[tuple, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in first:
                found.append((path + (key,), key_node.start_mark.line + 1, first[key]))
            elif key is not None:
                first[key] = key_node.start_mark.line + 1
            found += _duplicate_keys(value_node, path + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, path + (i,))
    return found


def load_yaml_model(path: str | Path, model: type[M]) -> M:
    """Parse `path` and validate it as `model`; ConfigError naming file, line and field otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return load_yaml_text(text, model, source=str(path))


def load_yaml_text(text: str, model: type[M], source: str = "<config>") -> M:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else "?"
        raise ConfigError(f"{source}:{line}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {exc}") from None
    dups = _duplicate_keys(root)
    if dups:
        raise ConfigError("\n".join(
            f"{source}:{line}: {'.'.join(str(p) for p in loc)}: given twice (first on line {first})"
            for loc, line, first in dups))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping of settings")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = []
        for loc, msg in explain_errors(model, exc.errors(), " (check the spelling; see docs/backend.md)"):
            field = ".".join(str(p) for p in loc) or "(top level)"
            line = _key_line(root, loc) if msg.startswith("unknown setting") else None
            if line is None:
                node = _node_at(root, loc)
                line = node.start_mark.line + 1 if node is not None else 1
            problems.append(f"{source}:{line}: {field}: {msg}")
        raise ConfigError("\n".join(problems)) from None


def line_of(path: str | Path, loc: tuple) -> int:
    """Line of the setting at `loc` in a YAML file already loaded (for checks made after loading,
    which must name file:line:field like the loader's own)."""
    try:
        root = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return 1
    line = _key_line(root, loc) if loc else None
    if line is None:
        node = _node_at(root, loc)
        line = node.start_mark.line + 1 if node is not None else 1
    return line
