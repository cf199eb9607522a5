"""Wording both services' config loaders share: durations and the messages for unknown keys.

    parse_duration("2m") -> 120.0
    explain_errors(EdgeConfig, exc.errors()) -> [(loc, "unknown setting 'gatway_id' - did you mean 'gateway_id'?")]

A typo in a key gives pydantic two errors (an unknown key, and a required one missing); an
operator needs one line that names the fix. (No Pyfhel here: the gateway imports this too.)
"""
from __future__ import annotations

import difflib
import re
import typing

from pydantic import BaseModel

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value) -> float:
    """'90s', '5m', '1h', '2d', '250ms' or a plain number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 1h")
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (examples: 30s, 5m, 1h, 250ms)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


class SettingError(ValueError):
    """Raised by a model validator to blame one field below the model (`loc`, relative to it), so
    the loaders can name that field's line: 'crowd.hysteresis', not just 'crowd'."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = tuple(loc)


def did_you_mean(word: str, choices) -> str:
    """" - did you mean 'x'?" for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" - did you mean {close[0]!r}?" if close else ""


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (X, X | None, list[X], dict[str, X])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _is_dict_of(annotation) -> bool:
    return typing.get_origin(annotation) is dict or any(_is_dict_of(a) for a in typing.get_args(annotation))


def model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc` (None if it is not a model)."""
    current, free_key = model, False
    for part in loc:
        if isinstance(part, int):
            continue                                  # a list item: the same model
        if free_key:                                  # a key of a dict[str, Model]
            free_key = False
            continue
        field = current.model_fields.get(str(part))
        nested = _models_in(field.annotation) if field is not None else []
        if not nested:
            return None
        current, free_key = nested[0], _is_dict_of(field.annotation)
    return None if free_key else current


def explain_errors(model: type[BaseModel], errors: list[dict], unknown_hint: str = "") -> list[tuple[tuple, str]]:
    """pydantic errors -> (loc, message) with unknown keys named and, where one is close, the
    setting meant; the "Field required" of a field whose misspelling is present is left out."""
    errors = [dict(e, loc=tuple(e["loc"]) + tuple(getattr((e.get("ctx") or {}).get("error"), "loc", ())))
              for e in errors]
    hints: dict[tuple, str] = {}
    for err in errors:
        if err["type"] == "extra_forbidden":
            owner = model_at(model, err["loc"][:-1])
            hints[err["loc"]] = did_you_mean(err["loc"][-1], list(owner.model_fields) if owner else [])
    meant = {loc[:-1] + (hint.split("'")[1],) for loc, hint in hints.items() if hint}
    out: list[tuple[tuple, str]] = []
    for err in errors:                        # in pydantic's order (the file's order)
        loc = err["loc"]
        if loc in hints:
            out.append((loc, f"unknown setting {str(loc[-1])!r}{hints[loc] or unknown_hint}"))
        elif not (err["type"] == "missing" and loc in meant):
            out.append((loc, err["msg"].removeprefix("Value error, ")))
    return out
