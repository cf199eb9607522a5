"""The repository's copy of the Mall dataset (frames 1-800) and the train/validation split.

    python -m training.mall --source PATH/TO/mall     # (re)build training/data/mall/mall.npz

(PATH/TO/mall: labels.json and frames/ of the Mall dataset's frames 1-800, see
training/data/mall/README.md.)

The copy keeps what training, tests and the demo need, a few MB instead of 35: for every model
input size a grayscale version of each frame exactly as `features.gray_small` computes it from
the 640x480 JPEG (BGR->GRAY, INTER_AREA in float, /255), stored as uint8 (x255, rounded: a
quantisation step of 1/255, far below the JPEG noise); 160x120 grayscale frames of the
validation split for the demo camera (JPEG); the counts and the head positions (for the density-map
loss). See training/data/mall/README.md for the dataset's terms and citation.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from training.features import gray_small

COPY = Path(__file__).resolve().parent / "data" / "mall" / "mall.npz"
SIZES = ((32, 32), (64, 64))                # (H, W) stored: the shipped model and the 64x64 variant
DEMO_SIZE = (160, 120)                      # (W, H) of the demo camera's frames
N_FRAMES, N_VALIDATION = 800, 160           # validate on the last 160 frames, never trained on
FRAME_SIZE = (640, 480)                     # (W, H) of the original frames (head positions refer to it)


@dataclass
class MallSplit:
    gray: np.ndarray         # (N, H, W) float32 in [0, 1]
    count: np.ndarray        # (N,) float32
    heads: list[np.ndarray]  # per frame: (k, 2) head positions as fractions of (width, height)
    frame: np.ndarray        # (N,) frame numbers 1..800

    def __len__(self) -> int:
        return len(self.count)


def build(source: Path, out: Path = COPY) -> Path:
    labels = json.loads((source / "labels.json").read_text())
    if len(labels) != N_FRAMES:
        raise SystemExit(f"{source}/labels.json: expected {N_FRAMES} frames, got {len(labels)}")
    arrays = {f"gray_{h}x{w}": [] for h, w in SIZES}
    demo, heads, offsets = [], [], [0]
    for i, lab in enumerate(labels):
        img = cv2.imread(str(source / "frames" / lab["frame"]), cv2.IMREAD_COLOR)
        if img is None or img.shape[1::-1] != FRAME_SIZE:
            raise SystemExit(f"{source}/frames/{lab['frame']}: not a readable {FRAME_SIZE} image")
        for h, w in SIZES:
            g = gray_small(img, (h, w))
            arrays[f"gray_{h}x{w}"].append(np.round(g * 255).astype(np.uint8))
        if i >= N_FRAMES - N_VALIDATION:
            gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            small = cv2.resize(gray, DEMO_SIZE, interpolation=cv2.INTER_AREA)
            demo.append(np.frombuffer(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], np.uint8))
        pts = np.asarray(lab["heads"], np.float64).reshape(-1, 2) / FRAME_SIZE
        if len(pts) != lab["count"]:
            raise SystemExit(f"{lab['frame']}: {len(pts)} head positions for count {lab['count']}")
        heads.append(pts.astype(np.float16))
        offsets.append(offsets[-1] + len(pts))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **{k: np.stack(v) for k, v in arrays.items()},
                        demo_jpeg=np.concatenate(demo),
                        demo_offsets=np.cumsum([0] + [len(d) for d in demo]).astype(np.int32),
                        count=np.asarray([lab["count"] for lab in labels], np.int16),
                        heads=np.concatenate(heads), head_offsets=np.asarray(offsets, np.int32))
    return out


def load(size: tuple[int, int], split: str, path: Path = COPY) -> MallSplit:
    """split: "train" (frames 1-640), "validation" (641-800) or "all"."""
    z = np.load(path, allow_pickle=False)
    key = f"gray_{size[0]}x{size[1]}"
    if key not in z:
        raise ValueError(f"{path} has no {size[0]}x{size[1]} copy (has {sorted(k for k in z if k.startswith('gray_'))})")
    sl = {"train": slice(0, N_FRAMES - N_VALIDATION), "validation": slice(N_FRAMES - N_VALIDATION, N_FRAMES),
          "all": slice(0, N_FRAMES)}[split]
    off = z["head_offsets"]
    heads = [z["heads"][off[i]:off[i + 1]].astype(np.float32) for i in range(N_FRAMES)][sl]
    return MallSplit(z[key][sl].astype(np.float32) / np.float32(255), z["count"][sl].astype(np.float32),
                     heads, np.arange(1, N_FRAMES + 1)[sl])


def demo_frames(path: Path = COPY) -> tuple[np.ndarray, np.ndarray]:
    """The validation frames at 160x120 (uint8 gray, decoded from the stored JPEGs) and their
    counts, for the demo camera."""
    z = np.load(path, allow_pickle=False)
    blob, off = z["demo_jpeg"], z["demo_offsets"]
    frames = np.stack([cv2.imdecode(blob[off[i]:off[i + 1]], cv2.IMREAD_GRAYSCALE) for i in range(len(off) - 1)])
    return frames, z["count"][N_FRAMES - N_VALIDATION:].astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="build the repository's copy of the Mall frames")
    ap.add_argument("--source", required=True, help="folder with labels.json and frames/ (the Mall training split)")
    ap.add_argument("--out", default=str(COPY))
    args = ap.parse_args(argv)
    out = build(Path(args.source), Path(args.out))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def cell_counts(split: MallSplit, cells: tuple[int, int]) -> np.ndarray:
    """(N, h, w) annotated heads per cell of an h x w grid over the frame: the density target."""
    h, w = cells
    out = np.zeros((len(split), h, w), np.float32)
    for i, pts in enumerate(split.heads):
        ys = np.clip((pts[:, 1] * h).astype(int), 0, h - 1)
        xs = np.clip((pts[:, 0] * w).astype(int), 0, w - 1)
        np.add.at(out[i], (ys, xs), 1.0)
    return out


def inputs(split: MallSplit, motion: bool) -> np.ndarray:
    """(N, 2, H, W) model inputs: motion zero (no reference frame), or against the previous frame
    of the split (about 0.5 s earlier in this dataset; zero for the split's first frame)."""
    m = np.zeros_like(split.gray)
    if motion:
        m[1:] = np.abs(split.gray[1:] - split.gray[:-1])
    return np.stack([split.gray, m], 1).astype(np.float32)
