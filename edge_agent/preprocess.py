"""Camera frame -> the model's input tensor, as the bundle's model card specifies it.

The card's `input` and `motion` sections (schema and defaults: protected_nn/model_card.py):

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

from protected_nn.model_card import (CHANNEL_MODES, KNOWN_MODES, CardError, InputSpecSection, ModelCard,
                                     MotionSection, parse_card)

_DEFAULT_MODE = {c: mode for mode, c in CHANNEL_MODES.items()}


class InputSpecError(CardError):
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
    def from_card(cls, card: ModelCard | dict) -> "InputSpec":
        """From the bundle's card (`ModelArtifacts.card()`, or its JSON as a dict); the card's
        schema has checked the `input` section against the shape (channels, mean, std)."""
        if not isinstance(card, ModelCard):
            try:
                card = parse_card(None, card)
            except CardError as exc:
                raise InputSpecError(str(exc)) from None
        shape = card.frame_shape()
        if shape is None or len(shape) != 4 or shape[0] != 1:
            raise InputSpecError(f"model card input shape {shape!r}: expected [1, C, H, W]")
        c = shape[1]
        section = card.input or InputSpecSection()
        mode = section.channels or _DEFAULT_MODE.get(c)
        if mode is None:
            raise InputSpecError(f"model card input shape {shape}: a camera frame gives 1, 2 or 3 "
                                 f"channels ({KNOWN_MODES})")
        motion = card.motion or MotionSection()
        return cls(mode, shape[2], shape[3], float(section.scale), _per_channel(section.mean, c),
                   _per_channel(section.std, c), float(motion.frame_interval_s))


def _per_channel(value: float | list[float], c: int) -> tuple[float, ...]:
    return tuple(float(v) for v in ([value] * c if isinstance(value, (int, float)) else value))


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
