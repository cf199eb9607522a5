"""The settings vocabulary of both services' YAML files.

    class MqttSettings(StrictModel):
        timeout: Seconds = 5.0               # 5, 5s, 250ms, 2m, 1h
        ca_file: ConfigPath | None = None    # relative to the config file, $VARIABLES expanded

File settings are resolved while the file is validated (the loader passes the config file's folder
as pydantic's validation context), so a validator that checks a file sees the path the service will
open - never one relative to whatever the working directory happens to be.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from protected_nn.config_words import parse_duration

BASE_DIR = "config_dir"      # key of the validation context holding the config file's folder


class StrictModel(BaseModel):
    """Every settings section: unknown keys are errors (a typo never falls back to a default) and a
    loaded configuration does not change under the service's feet."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Old spelling -> current one. The loader reads the old key too, with a warning naming file
    # and line, so a renamed setting never breaks a configuration that worked.
    renamed_settings: ClassVar[dict[str, str]] = {}


# A number of seconds, or a duration with a unit (250ms, 5s, 2m, 1h, 2d).
Seconds = Annotated[float, BeforeValidator(parse_duration)]


def resolve_path_setting(value: str, base: Path) -> str:
    """A file setting as both services read it: $VARIABLES expanded first (so
    `${CREDENTIALS_DIRECTORY}/mqtt-client-key` works with systemd's LoadCredential=, which is how
    a DynamicUser service reads a root-only key), then relative to the config file's folder. A
    variable that is not set stays as written, so the error names what the operator wrote."""
    expanded = os.path.expandvars(value)
    if "$" in expanded or Path(expanded).is_absolute():
        return expanded
    return str(base / expanded)


def _relative_to_config(value, info: ValidationInfo):
    base = (info.context or {}).get(BASE_DIR)
    if base is None or not isinstance(value, (str, Path)):
        return value           # built in code (tests, benchmarks): taken as given
    return resolve_path_setting(str(value), Path(base))


# A file or folder setting: relative to the config file, $VARIABLES expanded.
ConfigPath = Annotated[Path, BeforeValidator(_relative_to_config)]
# The same, kept as text (a setting that may stay '${CREDENTIALS_DIRECTORY}/x' until it is read).
ConfigPathText = Annotated[str, BeforeValidator(_relative_to_config)]


def relative_to_config(value, info: ValidationInfo):
    """For a validator of a setting that is a path only sometimes (the backend's database.url)."""
    return _relative_to_config(value, info)
