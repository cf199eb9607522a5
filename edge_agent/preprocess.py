"""Camera frame -> the model's input tensor, as the bundle's model card specifies it.

The model card (JSON member of the bundle) carries the input spec under "input":

    {"input": {"shape": [1, C, H, W],
               "channels": "gray" | "bgr" | "gray+motion",
               "scale": 0.00392156862745098,      # applied to 0..255 pixel values first
               "mean": [..C values..], "std": [..C values..]},
     "input_shape": [1, C, H, W],                 # used when "input" has no shape
     "motion": {"frame_interval_s": 0.1}}          # spacing of the motion channel's frame pair

Missing keys fall back to: channels from C (1 gray, 2 gray+motion, 3 bgr), scale 1/255, mean 0,
std 1, frame interval 0.1 s. This is exactly training/features.py (the shipped model's
preprocessing): gray = BGR->GRAY of the full frame, INTER_AREA resize in float32 (pixel-area averaging: no
aliasing when shrinking a lot), times scale; motion = |gray(frame) - gray(reference)| where the
reference is the stream frame ~frame_interval_s earlier (capture.py picks it), zeros when there
is none (first frame, stalled stream). Then (x - mean) / std per channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CHANNEL_MODES = {"gray": 1, "gray+motion": 2, "bgr": 3}
_DEFAULT_MODE = {1: "gray", 2: "gray+motion", 3: "bgr"}


class InputSpecError(ValueError):
    """The model card's input spec is malformed or asks for something we cannot produce."""


@dataclass(frozen=True)
class InputSpec:
    channels: str
    height: int
    width: int
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    motion_interval_s: float = 0.1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, CHANNEL_MODES[self.channels], self.height, self.width)

    @classmethod
    def from_card(cls, card: dict, fallback_shape: tuple[int, ...] | None = None) -> "InputSpec":
        spec = card.get("input") if isinstance(card, dict) else None
        spec = spec if isinstance(spec, dict) else {}
        shape = spec.get("shape") or card.get("input_shape") or fallback_shape
        if isinstance(shape, (list, tuple)) and len(shape) == 3:
            shape = [1, *shape]
        if (not isinstance(shape, (list, tuple)) or len(shape) != 4 or shape[0] != 1
                or not all(isinstance(d, int) and d > 0 for d in shape)):
            raise InputSpecError(f"model card input shape {shape!r}: expected [1, C, H, W]")
        c = shape[1]
        mode = spec.get("channels", _DEFAULT_MODE.get(c))
        if mode not in CHANNEL_MODES or CHANNEL_MODES[mode] != c:
            raise InputSpecError(f"model card input channels {mode!r} do not fit {c} channel(s) "
                                 f"(known: {', '.join(f'{k}={v}' for k, v in CHANNEL_MODES.items())})")
        scale = float(spec.get("scale", 1.0 / 255.0))
        mean = _per_channel(spec.get("mean", 0.0), c, "mean")
        std = _per_channel(spec.get("std", 1.0), c, "std")
        if any(s == 0 for s in std):
            raise InputSpecError("model card input std contains 0")
        motion = card.get("motion") if isinstance(card.get("motion"), dict) else {}
        interval = motion.get("frame_interval_s", spec.get("motion_interval_s", 0.1))
        if not isinstance(interval, (int, float)) or not 0 < interval <= 10:
            raise InputSpecError(f"model card motion frame_interval_s {interval!r}: expected 0 < s <= 10")
        return cls(mode, shape[2], shape[3], scale, mean, std, float(interval))


def _per_channel(value, c: int, name: str) -> tuple[float, ...]:
    values = [value] * c if isinstance(value, (int, float)) else value
    if not isinstance(values, (list, tuple)) or len(values) != c:
        raise InputSpecError(f"model card input {name} {value!r}: expected a number or {c} numbers")
    return tuple(float(v) for v in values)


class Preprocessor:
    """Frame (+ reference frame for the motion channel) -> float32 (1, C, H, W)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self._mean = np.asarray(spec.mean, np.float32)[None, :, None, None]
        self._std = np.asarray(spec.std, np.float32)[None, :, None, None]

    def _gray_small(self, frame_bgr: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
        # Resize in float (as training does): a uint8 resize would round away the sub-level
        # changes that small, far-away movers leave in the motion channel.
        small = cv2.resize(gray.astype(np.float32), (self.spec.width, self.spec.height),
                           interpolation=cv2.INTER_AREA)
        return small * np.float32(self.spec.scale)

    def __call__(self, frame_bgr: np.ndarray, reference_bgr: np.ndarray | None = None) -> np.ndarray:
        s = self.spec
        if s.channels == "bgr":
            small = cv2.resize(frame_bgr.astype(np.float32), (s.width, s.height), interpolation=cv2.INTER_AREA)
            planes = [small[:, :, i] * np.float32(s.scale) for i in range(3)]
        else:
            gray = self._gray_small(frame_bgr)
            planes = [gray]
            if s.channels == "gray+motion":
                if reference_bgr is None or reference_bgr.shape != frame_bgr.shape:
                    planes.append(np.zeros_like(gray))
                else:
                    planes.append(np.abs(gray - self._gray_small(reference_bgr)))
        x = np.stack(planes)[None]
        return ((x - self._mean) / self._std).astype(np.float32)
