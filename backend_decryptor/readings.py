"""What one decrypted result means, read through its model card (protected_nn/model_card.py:
the schema, the output kinds and their plausibility ranges `min`/`max`).

`check_plausible` runs first on every decrypted tensor: a value that is not finite or lies outside
its card range is `ImplausibleOutput`, the message is dropped (`implausible_output`) and never
reaches the rules - a result a real frame cannot produce is a forgery or a probe
(docs/threat-model.md). `read_outputs` then decodes the outputs the rules use into a `Reading`.
The decoded values never leave the backend; only the coarse labels chosen by the rules do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protected_nn.model_card import ModelCard, OutputSpec


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


def _finite_values(spec: OutputSpec, flat: np.ndarray) -> np.ndarray | None:
    """The output's raw values (None when the tensor is too short for it); ImplausibleOutput if
    one is not finite."""
    end = spec.index + spec.size
    if end > flat.size:
        return None
    values = flat[spec.index:end].astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ImplausibleOutput(f"output {spec.name} is not finite")
    return values


def check_plausible(card: ModelCard, output: np.ndarray) -> None:
    """Every output the card lists (that the tensor has) must be finite and within its range;
    raises ImplausibleOutput naming the first one that is not. Runs before the rules see anything."""
    flat = np.asarray(output).reshape(-1)
    for spec in card.outputs:
        values = _finite_values(spec, flat)
        if values is None:
            continue  # a missing output is read_outputs' business (bad_output if a rule needs it)
        if spec.kind == "count":
            values = values * spec.scale
        lo, hi = spec.bounds()
        if values.min() < lo or values.max() > hi:
            bad = values.min() if values.min() < lo else values.max()
            # the value itself is a decrypted result: it must not reach the log either
            raise ImplausibleOutput(f"output {spec.name} is outside its plausible range [{lo:g}, {hi:g}]"
                                    f" ({'below' if bad < lo else 'above'})")


def _value(spec: OutputSpec, flat: np.ndarray, card: ModelCard) -> tuple[float, list[str] | None]:
    values = _finite_values(spec, flat)
    if values is None:
        raise OutputError(f"output {spec.name} needs {spec.index + spec.size} values, the result has {flat.size}")
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
