"""The canonical frame -> model input preprocessing the shipped model was trained with.

Input of the model: float32 (1, 2, 32, 32).
  channel 0: grayscale of the frame (OpenCV BGR->GRAY, uint8), converted to float32, resized
             with INTER_AREA, times 1/255
  channel 1: |channel 0 of this frame - channel 0 of the previous frame| (after the resize, in
             float; zero for the first frame of a stream)
The previous frame is the one `FRAME_INTERVAL_S` earlier (the scenes are rendered at 10 fps);
training also shows the model gaps of up to `MAX_FRAME_GAP` frames so that a gateway that drops
frames under load still sees familiar motion magnitudes. This mirrors the ONNX metadata
`fhe_edge.input` / `fhe_edge.motion`; the gateway's preprocessing must compute the same thing.
"""
from __future__ import annotations

import cv2
import numpy as np

INPUT_SIZE = 32
FRAME_INTERVAL_S = 0.1
MAX_FRAME_GAP = 2


def gray_small(frame_bgr: np.ndarray, size: int | tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """HxWx3 uint8 BGR (or HxW gray) -> size x size (or size = (height, width)) float32 in [0, 1]."""
    if frame_bgr.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {frame_bgr.dtype}")
    if frame_bgr.ndim == 3 and frame_bgr.shape[2] == 3:
        gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    elif frame_bgr.ndim == 2:
        gray = frame_bgr
    else:
        raise ValueError(f"frame must be HxWx3 BGR or HxW gray, got shape {frame_bgr.shape}")
    # resize in float: a uint8 resize would round away the sub-level changes small, far-away
    # walkers leave in the 32x32 motion channel
    h, w = (size, size) if isinstance(size, int) else size
    small = cv2.resize(gray.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return small * np.float32(1 / 255)


def model_input(gray_now: np.ndarray, gray_prev: np.ndarray | None) -> np.ndarray:
    """Two preprocessed gray images -> the (1, 2, S, S) float32 model input."""
    motion = np.zeros_like(gray_now) if gray_prev is None else np.abs(gray_now - gray_prev)
    return np.stack([gray_now, motion])[None].astype(np.float32)


def sequence_inputs(frames: list[np.ndarray], gap: int = 1) -> np.ndarray:
    """All frames of a sequence -> (N, 2, S, S); frame t's motion is against frame t-gap."""
    grays = [gray_small(f) for f in frames]
    return np.concatenate([model_input(g, grays[i - gap] if i >= gap else None)
                           for i, g in enumerate(grays)])
