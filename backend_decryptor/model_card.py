"""What a model's outputs mean, from its model card (`store.model_card(model_id)`).

Card fields this service reads (anything else in the card is ignored):

    {"outputs": [
        {"name": "crowd_count", "index": 0, "kind": "count"},
        {"name": "density",     "index": 2, "kind": "class_scores", "size": 3,
         "labels": ["sparse", "busy", "packed"]},
        {"name": "incident",    "index": 1, "kind": "logit"}],
     "labels": {"density": ["sparse", "busy", "packed"]}}

- `index`: position in the flattened output tensor (onnxruntime's order).
- `kind`: `count` (a level, used as is, times optional `scale`), `logit` (score = sigmoid),
  `probability` (score, clipped to [0, 1]), `class_scores` (`size` values from `index`; the level
  is the argmax class number, its label from the output's `labels` or the card's `labels[name]`).
The decoded values never leave the backend; only the coarse labels chosen by the rules do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class CardError(ValueError):
    """A model card that does not describe the outputs the rules need."""


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(..., min_length=1, description="output name the alert rules refer to")
    index: int = Field(..., ge=0, description="position in the flattened output tensor")
    kind: Literal["count", "logit", "probability", "class_scores"] = Field(..., description="how to read the value(s)")
    size: int = Field(1, ge=1, description="number of values (class_scores only)")
    scale: float = Field(1.0, description="multiplier for count outputs (e.g. density map sum -> people)")
    labels: list[str] | None = Field(None, description="class labels (class_scores only)")

    @model_validator(mode="after")
    def _size_for_classes(self):
        if self.kind != "class_scores" and self.size != 1:
            raise ValueError(f"output {self.name}: size applies only to class_scores")
        return self


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="ignore")
    outputs: list[OutputSpec] = Field(..., min_length=1, description="meaning of the output values")
    labels: dict[str, list[str]] = Field(default_factory=dict, description="class labels by output name")

    def output(self, name: str) -> OutputSpec | None:
        return next((o for o in self.outputs if o.name == name), None)

    def class_labels(self, spec: OutputSpec) -> list[str] | None:
        return spec.labels or self.labels.get(spec.name)


def parse_card(model_id: str, card: dict) -> ModelCard:
    if not isinstance(card, dict):
        raise CardError(f"model {model_id}: model card is not a JSON object")
    try:
        return ModelCard.model_validate(card)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CardError(f"model {model_id}: model card {where}: {first['msg']}") from None


@dataclass(frozen=True)
class Reading:
    """The decoded meaning of one inference; stays inside the backend."""
    crowd_level: float | None = None            # count, or class number for class_scores
    crowd_labels: tuple[str, ...] | None = None  # class labels when the crowd output is a class
    incident_score: float | None = None          # probability in [0, 1]


class OutputError(ValueError):
    """A decrypted tensor that does not fit the card (too short, NaN...)."""


def _value(spec: OutputSpec, flat: np.ndarray, card: ModelCard) -> tuple[float, list[str] | None]:
    end = spec.index + spec.size
    if end > flat.size:
        raise OutputError(f"output {spec.name} needs {end} values, the result has {flat.size}")
    values = flat[spec.index:end].astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise OutputError(f"output {spec.name} is not finite")
    if spec.kind == "count":
        return float(values[0]) * spec.scale, None
    if spec.kind == "logit":
        x = float(values[0])
        return (1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))), None
    if spec.kind == "probability":
        return min(1.0, max(0.0, float(values[0]))), None
    return float(np.argmax(values)), card.class_labels(spec)


def read_outputs(card: ModelCard, output: np.ndarray, crowd_output: str | None,
                 incident_output: str | None) -> Reading:
    """Decode the outputs the rules use; an output the card does not list is simply absent."""
    flat = np.asarray(output).reshape(-1)
    crowd = incident = None
    labels = None
    if crowd_output and (spec := card.output(crowd_output)):
        crowd, labels = _value(spec, flat, card)
    if incident_output and (spec := card.output(incident_output)):
        if spec.kind == "class_scores":
            raise OutputError(f"output {spec.name}: an incident score must be a logit or probability")
        incident, _ = _value(spec, flat, card)
    return Reading(crowd, tuple(labels) if labels else None, incident)
