"""The backend's name for the shared YAML loader (service_common.yaml_loader), kept for the
modules and tests that import it from here; new code imports service_common directly."""
from __future__ import annotations

from protected_nn.config_words import parse_duration
from service_common.yaml_loader import ConfigError, line_of, load_yaml_model, load_yaml_text

__all__ = ["ConfigError", "line_of", "load_yaml_model", "load_yaml_text", "parse_duration"]
