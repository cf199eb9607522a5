"""Camera frame -> the model's input tensor, as the bundle's model card specifies it.

The model card (JSON member of the bundle) carries the input spec under "input":

    {"input": {"shape": [1, C, H, W],
               "channels": "gray" | "bgr" | "gray+motion",
               "scale": 0.00392156862745098,      # applied to 0..255 pixel values first
               "mean": [..C values..], "std": [..C values..]}}

Missing keys fall back to: channels from C (1 gray, 2 gray+motion, 3 bgr), scale 1/255, mean 0,
std 1. The motion channel is |gray_t - gray_prev| of the *downsampled, scaled* grayscale images,
where gray_prev is the previous frame this camera contributed (at its max_fps), so the motion
spans one sampling interval; the first frame of a camera (or after a reconnect) has zero motion.
Downsampling uses INTER_AREA (pixel-area averaging: no aliasing when shrinking a lot).
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

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, CHANNEL_MODES[self.channels], self.height, self.width)

    @classmethod
    def from_card(cls, card: dict, fallback_shape: tuple[int, ...] | None = None) -> "InputSpec":
        spec = card.get("input") if isinstance(card, dict) else None
        spec = spec if isinstance(spec, dict) else {}
        shape = spec.get("shape", fallback_shape)
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
        return cls(mode, shape[2], shape[3], scale, mean, std)


def _per_channel(value, c: int, name: str) -> tuple[float, ...]:
    values = [value] * c if isinstance(value, (int, float)) else value
    if not isinstance(values, (list, tuple)) or len(values) != c:
        raise InputSpecError(f"model card input {name} {value!r}: expected a number or {c} numbers")
    return tuple(float(v) for v in values)


class Preprocessor:
    """One per camera (it remembers the previous frame for the motion channel)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self._previous_gray: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the previous frame (after a reconnect the scene may have jumped)."""
        self._previous_gray = None

    def __call__(self, frame_bgr: np.ndarray) -> np.ndarray:
        s = self.spec
        small = cv2.resize(frame_bgr, (s.width, s.height), interpolation=cv2.INTER_AREA)
        if s.channels == "bgr":
            planes = [small[:, :, i].astype(np.float32) * s.scale for i in range(3)]
        else:
            gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32) * s.scale
            planes = [gray]
            if s.channels == "gray+motion":
                prev = self._previous_gray if self._previous_gray is not None else gray
                planes.append(np.abs(gray - prev))
                self._previous_gray = gray
        x = np.stack(planes)[None]
        mean = np.asarray(s.mean, np.float32)[None, :, None, None]
        std = np.asarray(s.std, np.float32)[None, :, None, None]
        return ((x - mean) / std).astype(np.float32)
