"""Training data: rendered synthetic sequences, or real labelled footage from a folder.

Real footage layout (what `load_labelled_folder` reads):

    footage/
      labels.csv          # header: frame,count,incident[,sequence]
      cam1_000001.jpg     # any format OpenCV reads; the CSV names each file
      ...

`frame` is a path relative to the folder, `count` the number of people in view (>= 0),
`incident` 0 or 1, `sequence` (optional) a clip name: rows are taken in CSV order and the motion
channel is computed against the previous row of the same sequence (zero for a clip's first row),
so list the frames of a clip in time order, at about `features.FRAME_INTERVAL_S` apart.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from training.features import INPUT_SIZE, MAX_FRAME_GAP, gray_small, model_input
from training.scenes import KINDS, SceneRenderer

KIND_WEIGHTS = {"calm": 0.1, "crowd": 0.35, "dispersal": 0.3, "fall": 0.25}


@dataclass
class LabelledSet:
    x: np.ndarray            # (N, 2, H, W) float32
    count: np.ndarray        # (N,) float32
    incident: np.ndarray     # (N,) float32, 0 or 1
    kind: np.ndarray         # (N,) str: scenario kind ("real" for footage)

    def __len__(self) -> int:
        return len(self.count)

    @staticmethod
    def concat(parts: list["LabelledSet"]) -> "LabelledSet":
        return LabelledSet(*(np.concatenate([getattr(p, f) for p in parts])
                             for f in ("x", "count", "incident", "kind")))


def kind_for_seed(seed: int) -> str:
    rng = np.random.default_rng([int(seed), 7])
    return str(rng.choice(list(KINDS), p=[KIND_WEIGHTS[k] for k in KINDS]))


def _chosen_frames(seed: int, n_frames: int, chunks: int | None, chunk_len: int) -> set[int]:
    """Which frames of a sequence get drawn: all of them, or a few short runs of consecutive
    frames (many short glimpses of many scenes generalise better than long looks at few)."""
    if chunks is None or chunks * chunk_len >= n_frames:
        return set(range(n_frames))
    rng = np.random.default_rng([int(seed), 5])
    starts = rng.choice(n_frames - chunk_len + 1, size=chunks, replace=False)
    return {int(s) + i for s in starts for i in range(chunk_len)}


def synthetic_sequence(args: tuple) -> LabelledSet:
    """One rendered sequence -> model inputs; motion gaps of 1..max_gap frames (seeded).
    args: (seed, n_frames, sizes, max_gap, chunks, chunk_len[, input_size]); sizes = ((w, h), ...)
    one of which is picked per seed; chunks = None renders every frame; input_size = the model
    input's (H, W) (default 32x32)."""
    seed, n_frames, sizes, max_gap, chunks, chunk_len, *rest = args
    input_size = tuple(rest[0]) if rest else (INPUT_SIZE, INPUT_SIZE)
    kind = kind_for_seed(seed)
    pick = np.random.default_rng([int(seed), 4])
    width, height = sizes[int(pick.integers(len(sizes)))]
    gap_rng = np.random.default_rng([int(seed), 3])
    drawn = _chosen_frames(seed, n_frames, chunks, chunk_len)
    renderer = SceneRenderer(seed, n_frames, width, height, kind)
    grays, xs, counts, incidents = {}, [], [], []
    for t in range(n_frames):
        label = renderer.advance()
        if t not in drawn:
            continue
        grays[t] = gray_small(renderer.render(), input_size)
        gaps = [g for g in range(1, max_gap + 1) if t - g in grays]
        if t > 0 and not gaps:
            continue                 # first frame of a run: only serves as the previous frame
        gap = gaps[int(gap_rng.integers(len(gaps)))] if gaps else 0
        xs.append(model_input(grays[t], grays[t - gap] if gap else None))
        counts.append(label["count"])
        incidents.append(float(label["incident"]))
    return LabelledSet(np.concatenate(xs), np.asarray(counts, np.float32),
                       np.asarray(incidents, np.float32), np.full(len(counts), kind))


def synthetic_set(seeds, n_frames: int = 100, width: int = 160, height: int = 120,
                  max_gap: int = MAX_FRAME_GAP, workers: int = 2, *, sizes=None,
                  chunks: int | None = None, chunk_len: int = 5,
                  input_size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> LabelledSet:
    """Render one sequence per seed (forked workers; the result does not depend on `workers`).
    `sizes` (a list of (w, h)) overrides width/height with a per-seed choice; `input_size` is
    the model input's (H, W)."""
    sizes = tuple(tuple(s) for s in (sizes or [(width, height)]))
    jobs = [(int(s), n_frames, sizes, max_gap, chunks, chunk_len, tuple(input_size)) for s in seeds]
    if workers <= 1 or len(jobs) < 4:
        parts = [synthetic_sequence(j) for j in jobs]
    else:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(synthetic_sequence, jobs, chunksize=8)
    return LabelledSet.concat(parts)


class FootageError(ValueError):
    """A labelled-footage folder or its CSV is not usable; the message names file, line, field."""


def _parse_row(csv_path: Path, line: int, row: dict) -> tuple[str, float, float, str]:
    name = (row.get("frame") or "").strip()
    if not name:
        raise FootageError(f"{csv_path}:{line}: field 'frame' is empty")
    try:
        count = float(row["count"])
    except (TypeError, ValueError):
        raise FootageError(f"{csv_path}:{line}: field 'count' must be a number, got {row.get('count')!r}") from None
    if not np.isfinite(count) or count < 0:
        raise FootageError(f"{csv_path}:{line}: field 'count' must be >= 0, got {row['count']!r}")
    inc = (row.get("incident") or "").strip().lower()
    if inc not in ("0", "1", "true", "false", "yes", "no"):
        raise FootageError(f"{csv_path}:{line}: field 'incident' must be 0 or 1, got {row.get('incident')!r}")
    return name, count, float(inc in ("1", "true", "yes")), (row.get("sequence") or "").strip()


def load_labelled_folder(folder: str | Path, csv_name: str = "labels.csv",
                         input_size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> LabelledSet:
    """Frames + CSV labels -> model inputs with the same preprocessing as the synthetic data."""
    folder = Path(folder)
    csv_path = folder / csv_name
    if not csv_path.is_file():
        raise FootageError(f"{csv_path}: label file not found")
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"frame", "count", "incident"} - set(reader.fieldnames or [])
        if missing:
            raise FootageError(f"{csv_path}:1: header lacks column(s) {sorted(missing)}; "
                               f"expected frame,count,incident[,sequence]")
        rows = [_parse_row(csv_path, i + 2, r) for i, r in enumerate(reader)]
    if not rows:
        raise FootageError(f"{csv_path}: no labelled rows")
    xs, prev = [], {}
    for line, (name, _, _, seq) in enumerate(rows, start=2):
        path = folder / name
        img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if img is None:
            raise FootageError(f"{csv_path}:{line}: field 'frame': cannot read image {path}")
        g = gray_small(img, input_size)
        xs.append(model_input(g, prev.get(seq)))
        prev[seq] = g
    return LabelledSet(np.concatenate(xs), np.asarray([r[1] for r in rows], np.float32),
                       np.asarray([r[2] for r in rows], np.float32), np.full(len(rows), "real"))
