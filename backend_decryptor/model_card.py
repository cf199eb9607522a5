"""What a model's outputs mean, from its model card (`store.model_card(model_id)`).

Card fields this service reads (other top-level card fields are the gateway's; an unknown key
inside an output is refused, with the closest known key suggested):

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
- `min`, `max` (optional): the plausible range. For `count` it bounds the count (after `scale`)
  and `min` defaults to -0.5 (CKKS noise makes 0 come out as a tiny negative); for the other
  kinds it bounds each raw decrypted value (the logit, the probability before clipping, each class
  score) and both default to none. A value outside, or not finite, is `ImplausibleOutput`: the
  message is dropped (`implausible_output`) and never reaches the rules - a result a real frame
  cannot produce is a forgery or a probe (docs/threat-model.md).
The decoded values never leave the backend; only the coarse labels chosen by the rules do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protected_nn.config_words import explain_errors


COUNT_DEFAULT_MIN = -0.5


class CardError(ValueError):
    """A model card that does not describe the outputs the rules need."""


class OutputSpec(BaseModel):
    # Unknown keys refused: `maxx: 50` must not silently drop a plausibility bound (a defence
    # against forged results, docs/threat-model.md).
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, description="output name the alert rules refer to")
    index: int = Field(..., ge=0, description="position in the flattened output tensor")
    kind: Literal["count", "logit", "probability", "class_scores"] = Field(..., description="how to read the value(s)")
    size: int = Field(1, ge=1, description="number of values (class_scores only)")
    scale: float = Field(1.0, description="multiplier for count outputs (e.g. density map sum -> people)")
    labels: list[str] | None = Field(None, description="class labels (class_scores only)")
    min: float | None = Field(None, description="lowest plausible value (count: after scale, default -0.5; "
                                                "other kinds: each raw value, default none)")
    max: float | None = Field(None, description="highest plausible value (count: after scale; other kinds: "
                                                "each raw value); default none")

    @model_validator(mode="after")
    def _size_for_classes(self):
        if self.kind != "class_scores" and self.size != 1:
            raise ValueError(f"output {self.name}: size applies only to class_scores")
        lo, hi = self.bounds()
        if math.isnan(lo) or math.isnan(hi) or lo > hi or lo == math.inf or hi == -math.inf:
            raise ValueError(f"output {self.name}: min {lo} and max {hi} are not a range")
        return self

    def bounds(self) -> tuple[float, float]:
        lo = self.min if self.min is not None else (COUNT_DEFAULT_MIN if self.kind == "count" else -math.inf)
        return lo, self.max if self.max is not None else math.inf


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
        problems = [f"model card {'.'.join(str(p) for p in loc)}: {msg}"
                    for loc, msg in explain_errors(ModelCard, exc.errors())]
        raise CardError(f"model {model_id}: {'; '.join(problems)}") from None


@dataclass(frozen=True)
class Reading:
    """The decoded meaning of one inference; stays inside the backend."""
    crowd_level: float | None = None            # count, or class number for class_scores
    crowd_labels: tuple[str, ...] | None = None  # class labels when the crowd output is a class
    incident_score: float | None = None          # probability in [0, 1]


class OutputError(ValueError):
    """A decrypted tensor that does not fit the card (too short...)."""


class ImplausibleOutput(OutputError):
    """A decrypted value that is not finite or lies outside its card range."""


def check_plausible(card: ModelCard, output: np.ndarray) -> None:
    """Every output the card lists (that the tensor has) must be finite and within its range;
    raises ImplausibleOutput naming the first one that is not. Runs before the rules see anything."""
    flat = np.asarray(output).reshape(-1)
    for spec in card.outputs:
        end = spec.index + spec.size
        if end > flat.size:
            continue  # a missing output is read_outputs' business (bad_output if a rule needs it)
        values = flat[spec.index:end].astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ImplausibleOutput(f"output {spec.name} is not finite")
        if spec.kind == "count":
            values = values * spec.scale
        lo, hi = spec.bounds()
        if values.min() < lo or values.max() > hi:
            bad = values.min() if values.min() < lo else values.max()
            # the value itself is a decrypted result: it must not reach the log either
            raise ImplausibleOutput(f"output {spec.name} is outside its plausible range [{lo:g}, {hi:g}]"
                                    f" ({'below' if bad < lo else 'above'})")


def _value(spec: OutputSpec, flat: np.ndarray, card: ModelCard) -> tuple[float, list[str] | None]:
    end = spec.index + spec.size
    if end > flat.size:
        raise OutputError(f"output {spec.name} needs {end} values, the result has {flat.size}")
    values = flat[spec.index:end].astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ImplausibleOutput(f"output {spec.name} is not finite")
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
