"""The model card: the one schema of what travels with a protected model beside its plan.

`protect` builds it (ONNX metadata `fhe_edge.<field>` plus an owner's card YAML, see
`card_from_onnx`), the bundle and the store carry it as JSON (`ModelArtifacts.model_card`), the
gateway reads `input`/`motion` (edge_agent/preprocess.py) and `calibrated_input_range`, the
backend reads `outputs`/`labels` (backend_decryptor/readings.py). Every section refuses unknown
keys: a misspelt key is an error naming it (`outputs.0.maxx: unknown setting 'maxx' - did you
mean 'max'?`), never a silently ignored setting - `min`/`max` are part of the backend's defence
against forged results (docs/threat-model.md), and a misspelt `input.chanels` would make the
gateway feed the model something it was not trained on.

    {"input_shape": [1, 2, 32, 32], "output_shape": [1, 2],       # written by protect
     "calibrated_input_range": [0.0, 1.0],                         # written by protect
     "description": "...",                                         # ONNX fhe_edge.model_card
     "input": {"shape": [1, 2, 32, 32], "channels": "gray+motion", "scale": 0.0039, "mean": 0,
               "std": 1, "resize": "area"},
     "motion": {"frame_interval_s": 0.1, "order": "resize_then_absdiff", "first_frame": "zeros",
                "trained_gaps_frames": [1, 2], "count_uses_motion": false},
     "outputs": [{"name": "crowd_count", "index": 0, "kind": "count", "max": 200},
                 {"name": "incident", "index": 1, "kind": "logit"}],
     "labels": {"density": ["sparse", "busy", "packed"]},          # class labels by output name
     "arch": {...}, "adapt": {...}}                                # provenance, read by no service

Outputs (the plausibility ranges are `min`/`max`): `index` is the position in the flattened output
tensor (onnxruntime's order); `kind` is `count` (a level, times `scale`), `logit` (score =
sigmoid), `probability` (clipped to [0, 1]) or `class_scores` (`size` values from `index`, level =
argmax). For `count` the range bounds the count after `scale` and `min` defaults to -0.5 (CKKS
noise makes 0 come out as a tiny negative); for the other kinds it bounds each raw decrypted value
and both default to none.
"""
from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protected_nn.config_words import SettingError, did_you_mean, explain_errors
from protected_nn.errors import ProtectedNNError

COUNT_DEFAULT_MIN = -0.5
CHANNEL_MODES = {"gray": 1, "gray+motion": 2, "bgr": 3}
KNOWN_MODES = ", ".join(f"{mode}={c}" for mode, c in CHANNEL_MODES.items())
METADATA_PREFIX = "fhe_edge."        # ONNX metadata_props key of a card field
DESCRIPTION_KEY = "model_card"       # fhe_edge.model_card: the free text, card field `description`


class CardError(ProtectedNNError, ValueError):
    """A model card that does not fit the schema, naming the model, the field and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpecSection(_Section):
    shape: list[int] | None = Field(None, description="[1, C, H, W] (or [C, H, W]); default: input_shape")
    channels: Literal["gray", "gray+motion", "bgr"] | None = Field(
        None, description="what the C planes are; default from C: 1 gray, 2 gray+motion, 3 bgr")
    scale: float = Field(1.0 / 255.0, description="applied to 0..255 pixel values first")
    mean: float | list[float] = Field(0.0, description="subtracted per channel after scale")
    std: float | list[float] = Field(1.0, description="divided per channel after mean; never 0")
    resize: Literal["area"] = Field("area", description="downsampling: pixel-area averaging (INTER_AREA)")

    @model_validator(mode="after")
    def _form(self):
        if self.shape is not None and not (len(self.shape) in (3, 4) and all(d > 0 for d in self.shape)
                                           and (len(self.shape) == 3 or self.shape[0] == 1)):
            raise SettingError(("shape",), f"{self.shape}: expected [1, C, H, W]")
        if 0 in ([self.std] if isinstance(self.std, (int, float)) else self.std):
            raise SettingError(("std",), "std contains 0")
        return self


class MotionSection(_Section):
    frame_interval_s: float = Field(0.1, gt=0, le=10, description="spacing of the motion channel's frame pair")
    order: Literal["resize_then_absdiff"] = Field("resize_then_absdiff", description="how the motion plane is made")
    first_frame: Literal["zeros"] = Field("zeros", description="motion plane when there is no earlier frame")
    trained_gaps_frames: list[int] | None = Field(None, description="frame gaps seen in training (provenance)")
    count_uses_motion: bool | None = Field(None, description="whether the count reads the motion plane (provenance)")


class OutputSpec(_Section):
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
    def _size_and_range(self):
        if self.kind != "class_scores" and self.size != 1:
            raise SettingError(("size",), f"output {self.name}: size applies only to class_scores")
        lo, hi = self.bounds()
        if math.isnan(lo) or math.isnan(hi) or lo > hi or lo == math.inf or hi == -math.inf:
            raise ValueError(f"output {self.name}: min {lo} and max {hi} are not a range")
        return self

    def bounds(self) -> tuple[float, float]:
        lo = self.min if self.min is not None else (COUNT_DEFAULT_MIN if self.kind == "count" else -math.inf)
        return lo, self.max if self.max is not None else math.inf


class ModelCard(_Section):
    input_shape: list[int] | None = Field(None, description="the model input's shape (protect writes it)")
    output_shape: list[int] | None = Field(None, description="the model output's shape (protect writes it)")
    calibrated_input_range: tuple[float, float] | None = Field(
        None, description="[low, high] of the calibration inputs (protect writes it)")
    description: str | None = Field(None, description="free text (ONNX metadata fhe_edge.model_card)")
    input: InputSpecSection | None = Field(None, description="how the gateway turns a frame into the input")
    motion: MotionSection | None = Field(None, description="the motion channel's frame pair")
    outputs: list[OutputSpec] = Field(default_factory=list, description="meaning of the output values")
    labels: dict[str, list[str]] = Field(default_factory=dict, description="class labels by output name")
    arch: dict[str, Any] | None = Field(None, description="training's architecture record (provenance)")
    adapt: dict[str, Any] | None = Field(None, description="`backend-decryptor adapt`'s record (provenance)")

    @model_validator(mode="after")
    def _outputs_fit(self):
        names = [o.name for o in self.outputs]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise SettingError(("outputs", i, "name"), f"output {name!r} is listed twice")
        n_values = math.prod(self.output_shape) if self.output_shape else None
        for i, o in enumerate(self.outputs):
            if n_values is not None and o.index + o.size > n_values:
                raise SettingError(("outputs", i, "index"), f"output {o.name} needs {o.index + o.size} "
                                   f"values, the model has {n_values} (output shape {self.output_shape})")
        for name in self.labels:
            if self.output(name) is None:
                raise SettingError(("labels", name), f"no output is named {name!r}{did_you_mean(name, names)}")
        return self

    @model_validator(mode="after")
    def _input_fits(self):
        """The `input` section against the shape it describes (its own, else input_shape)."""
        shape = self.frame_shape()
        if self.input is None or shape is None:
            return self
        if self.input.shape and self.input_shape and shape != _full(self.input_shape):
            raise SettingError(("input", "shape"), f"{self.input.shape} is not the model's input shape "
                                                   f"{self.input_shape}")
        if len(shape) != 4 or shape[0] != 1:
            raise SettingError(("input",), f"the model input {shape} is not a frame [1, C, H, W]")
        c = shape[1]
        if self.input.channels is not None and CHANNEL_MODES[self.input.channels] != c:
            raise SettingError(("input", "channels"), f"channels {self.input.channels!r} do not fit {c} "
                               f"channel(s) (known: {KNOWN_MODES})")
        for name in ("mean", "std"):
            value = getattr(self.input, name)
            if isinstance(value, list) and len(value) != c:
                raise SettingError(("input", name), f"{value}: expected a number or {c} numbers")
        return self

    def frame_shape(self) -> list[int] | None:
        """The shape the gateway makes frames into: `input.shape`, else `input_shape` (3 dims get
        the batch of one); None when the card has neither."""
        shape = (self.input.shape if self.input else None) or self.input_shape
        return None if shape is None else _full(shape)

    def output(self, name: str) -> OutputSpec | None:
        return next((o for o in self.outputs if o.name == name), None)

    def class_labels(self, spec: OutputSpec) -> list[str] | None:
        return spec.labels or self.labels.get(spec.name)

    def to_json(self) -> bytes:
        """What the bundle and the store keep: the fields as given (defaults are not written, so a
        later default change applies to old cards too)."""
        return json.dumps(self.model_dump(mode="json", exclude_unset=True)).encode()


def _full(shape: list[int]) -> list[int]:
    return [1, *shape] if len(shape) == 3 else list(shape)


def parse_card(model_id: str | None, card, *, need_outputs: bool = False) -> ModelCard:
    """A card (dict, or the JSON bytes a bundle or store holds; empty = no card) -> ModelCard;
    CardError naming the model (when given) and every field that is wrong. `need_outputs`: the
    backend's rules cannot read a model whose card does not say what its outputs mean."""
    where = f"model {model_id}: " if model_id else ""
    if isinstance(card, (bytes, str)):
        try:
            card = json.loads(card) if card else {}
        except ValueError as exc:
            raise CardError(f"{where}model card is not JSON: {exc}") from None
    if not isinstance(card, dict):
        raise CardError(f"{where}model card is not a JSON object")
    try:
        parsed = ModelCard.model_validate(card)
    except ValidationError as exc:
        problems = [f"model card {'.'.join(str(p) for p in loc)}: {msg}"
                    for loc, msg in explain_errors(ModelCard, exc.errors())]
        raise CardError(f"{where}{'; '.join(problems)}") from None
    if need_outputs and not parsed.outputs:
        raise CardError(f"{where}model card outputs: none listed (what the outputs mean)")
    return parsed


def card_from_onnx(model_id: str | None, metadata: dict[str, str], input_shape, output_shape,
                   override: dict | None = None, calibrated_input_range=None) -> ModelCard:
    """The card `protect` writes: ONNX metadata `fhe_edge.<field>` (JSON values; `fhe_edge.model_card`
    is the description), then the owner's card YAML (`override`) on top, then what protect measured.
    An `fhe_edge.` key that names no card field is refused (a misspelt `fhe_edge.outptus` would
    otherwise ship a model whose outputs mean nothing to the backend)."""
    card: dict = {}
    if input_shape:
        card["input_shape"] = list(input_shape)
    if output_shape:
        card["output_shape"] = list(output_shape)
    fields = set(ModelCard.model_fields) - {"description"}
    for key, value in metadata.items():
        if not key.startswith(METADATA_PREFIX):
            continue
        field = key[len(METADATA_PREFIX):]
        if field == DESCRIPTION_KEY:
            card["description"] = value
            continue
        if field not in fields:
            known = [METADATA_PREFIX + f for f in sorted(fields | {DESCRIPTION_KEY})]
            where = f"model {model_id}: " if model_id else ""
            raise CardError(f"{where}ONNX metadata {key}: not a model card field"
                            f"{did_you_mean(key, known)}")
        try:
            card[field] = json.loads(value)
        except ValueError:
            card[field] = value
    card.update(override or {})
    if calibrated_input_range is not None:
        card["calibrated_input_range"] = [float(v) for v in calibrated_input_range]
    return parse_card(model_id, card)
