"""Load a YAML file into a pydantic model so that every error names file, line and field.

    cfg = load_yaml_model("/etc/fhe-edge/edge.yaml", EdgeConfig, hint=" (see docs/gateway.md)")
    # ConfigError (a ValueError) lists every problem at once, e.g.
    #   /etc/fhe-edge/edge.yaml:12: mqtt.port: Input should be less than or equal to 65535

PyYAML's composer keeps the position of every node and pydantic reports the path (`loc`) of every
invalid field; a map from settings path to line joins the two. Before validation the loader refuses
a key given twice (PyYAML silently keeps the last one: an operator who sets a threshold twice must
be told which one counts) and reads renamed keys under their new name, with a warning.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import pydantic
import yaml

from protected_nn.config_words import explain_errors, model_at
from service_common.cli import warn as print_warning
from service_common.settings import BASE_DIR

M = TypeVar("M", bound=pydantic.BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used: every problem as 'FILE:LINE: setting: reason'."""

    def __init__(self, problems: list[str] | str):
        self.problems = problems.splitlines() if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))



def read_text(path: Path, label: str) -> str:
    """The UTF-8 text of `path`; ConfigError "<label>: cannot read: <reason>" (no errno) otherwise."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{label}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{label}: not UTF-8 text"]) from None

def field_name(loc: tuple) -> str:
    """('cameras', 0, 'id') -> 'cameras[0].id', as both services name a setting."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "(top level)"


def _record_lines(node, path: tuple, lines: dict, duplicates: list, seen: set) -> None:
    """Record the 1-based line of every settings path of a composed YAML node (the data itself
    comes from yaml.safe_load, which handles merge keys and refuses unhashable keys). Aliases can
    make the node graph cyclic: each node is walked once. A key given twice in one mapping is
    collected in `duplicates` as (path, line, first line)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first_line: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = yaml.safe_load(yaml.serialize(key_node))  # one scalar: resolves tags like safe_load
            line = key_node.start_mark.line + 1
            if key in first_line:
                duplicates.append((path + (key,), line, first_line[key]))
                continue
            first_line[key] = line
            lines[path + (key,)] = line
            _record_lines(value_node, path + (key,), lines, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, path + (i,), lines, duplicates, seen)


def _line_of(loc: tuple, lines: dict) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _parse(text: str, source: str) -> tuple[object, dict]:
    """(data, settings path -> line); ConfigError on bad syntax or a key given twice."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or ("aliases nested too deep" if isinstance(exc, RecursionError)
                                                    else exc)
        raise ConfigError([f"{where}: YAML syntax error: {problem}"]) from None
    lines: dict = {}
    duplicates: list = []
    if node is not None:
        _record_lines(node, (), lines, duplicates, set())
    if duplicates:
        raise ConfigError([f"{source}:{line}: {field_name(loc)}: given twice (first on line {first})"
                           for loc, line, first in duplicates])
    return data, lines


def _apply_renames(data, model: type[pydantic.BaseModel], loc: tuple, lines: dict, source: str,
                   problems: list[str], warnings: list[str], seen: set) -> None:
    """Read every old spelling (StrictModel.renamed_settings) under its current name."""
    if id(data) in seen:      # aliases: one object reachable along several paths (or a cycle)
        return
    seen.add(id(data))
    if isinstance(data, list):
        for i, item in enumerate(data):
            _apply_renames(item, model, loc + (i,), lines, source, problems, warnings, seen)
        return
    if not isinstance(data, dict):
        return
    owner = model_at(model, loc)
    for old, new in (getattr(owner, "renamed_settings", None) or {}).items():
        if old not in data:
            continue
        line = _line_of(loc + (old,), lines)
        if new in data:
            problems.append(f"{source}:{line}: {field_name(loc + (old,))}: the old spelling of {new!r}, "
                            f"which is given too (line {_line_of(loc + (new,), lines)}): keep only {new!r}")
            continue
        data[new] = data.pop(old)
        for path in [p for p in lines if p[:len(loc) + 1] == loc + (old,)]:
            lines.setdefault(loc + (new,) + path[len(loc) + 1:], lines[path])
        warnings.append(f"{source}:{line}: {field_name(loc + (old,))}: deprecated spelling of {new!r} "
                        f"(still read; rename it to {new})")
    for key, value in data.items():
        if isinstance(value, (dict, list)):
            _apply_renames(value, model, loc + (key,), lines, source, problems, warnings, seen)


def load_yaml_text(text: str, model: type[M], source: str = "<config>", *, base_dir: Path | None = None,
                   hint: str = "", allow_empty: bool = False,
                   warn: Callable[[str], None] = print_warning) -> M:
    """Validate YAML `text` as `model`. `base_dir`: the folder relative file settings are taken
    from (settings.ConfigPath); `hint`: appended to an unknown key without a close match;
    `allow_empty`: an empty file means every default (else it is an error)."""
    data, lines = _parse(text, source)
    if data is None and allow_empty:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: (top level): expected a mapping of settings"])
    problems: list[str] = []
    warnings: list[str] = []
    _apply_renames(data, model, (), lines, source, problems, warnings, set())
    for line in warnings:
        warn(line)
    context = {BASE_DIR: str(base_dir)} if base_dir is not None else None
    try:
        result = model.model_validate(data, context=context)
    except pydantic.ValidationError as exc:
        problems += [f"{source}:{_line_of(loc, lines)}: {field_name(loc)}: {msg}"
                     for loc, msg in explain_errors(model, exc.errors(), hint)]
    if problems:
        raise ConfigError(problems)
    return result


def load_yaml_model(path: str | os.PathLike, model: type[M], *, hint: str = "", allow_empty: bool = False,
                    warn: Callable[[str], None] = print_warning) -> M:
    """Parse the file at `path` and validate it as `model`; relative file settings are relative
    to the file's folder. ConfigError naming file, line and field otherwise."""
    path = Path(path)
    text = read_text(path, str(path))
    return load_yaml_text(text, model, str(path), base_dir=path.absolute().parent, hint=hint,
                          allow_empty=allow_empty, warn=warn)


def _lines_of(path: str | os.PathLike) -> dict:
    try:
        return _parse(Path(path).read_text(encoding="utf-8"), str(path))[1]
    except (OSError, UnicodeDecodeError, ConfigError):
        return {}


def line_of(path: str | os.PathLike, loc: tuple) -> int:
    """Line of the setting at `loc` in a YAML file already loaded (for checks made after loading,
    which must name FILE:LINE: setting like the loader's own); the line of the closest enclosing
    setting given, 1 when none is."""
    return _line_of(tuple(loc), _lines_of(path))


def setting_line(path: str | os.PathLike, loc: tuple) -> int | None:
    """Line of the setting at `loc` when the file gives exactly that setting, else None."""
    return _lines_of(path).get(tuple(loc))
