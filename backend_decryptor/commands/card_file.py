"""The model card YAML an owner may keep beside the ONNX file (MODEL.card.yaml or MODEL.yaml).

It says what the outputs mean (the schema: protected_nn/model_card.py); it is validated here, at
protect time, so that a typo is reported with its file and line instead of surfacing later as an
alert that never fires."""
from __future__ import annotations

from pathlib import Path

import yaml

from protected_nn.model_card import ModelCard
from service_common.yaml_loader import load_yaml_model


def card_beside(model: Path) -> Path | None:
    for candidate in (model.with_name(model.name + ".card.yaml"), model.with_name(model.stem + ".card.yaml"),
                      model.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    return None


def load_card(path: Path) -> dict:
    """The card as a dict; ConfigError (a ValueError) naming file, line and field if invalid."""
    load_yaml_model(path, ModelCard)  # validates; raises with file:line: field
    return yaml.safe_load(path.read_text())
