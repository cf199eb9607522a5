"""Loading real labelled footage (frames + CSV) and the synthetic set builder."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from training.dataset import FootageError, load_labelled_folder, synthetic_set
from training.features import gray_small


def _frames(tmp_path, n=4, seed=0):
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        name = f"f{i:03d}.png"
        cv2.imwrite(str(tmp_path / name), img)
        names.append(name)
    return names


def test_footage_folder_loads_with_motion_per_sequence(tmp_path):
    names = _frames(tmp_path)
    (tmp_path / "labels.csv").write_text(
        "frame,count,incident,sequence\n"
        f"{names[0]},3,0,a\n{names[1]},4,1,a\n{names[2]},0,no,b\n{names[3]},2.5,yes,b\n")
    data = load_labelled_folder(tmp_path)
    assert data.x.shape == (4, 2, 32, 32) and data.x.dtype == np.float32
    assert data.count.tolist() == [3, 4, 0, 2.5]
    assert data.incident.tolist() == [0, 1, 0, 1]
    g = [gray_small(cv2.imread(str(tmp_path / n))) for n in names]
    np.testing.assert_allclose(data.x[1, 0], g[1])
    np.testing.assert_allclose(data.x[1, 1], np.abs(g[1] - g[0]))
    assert not data.x[2, 1].any(), "a new sequence starts without motion"
    np.testing.assert_allclose(data.x[3, 1], np.abs(g[3] - g[2]))


@pytest.mark.parametrize("csv_text, match", [
    ("frame,count\nf000.png,1\n", r"labels.csv:1: header lacks column\(s\) \['incident'\]"),
    ("frame,count,incident\nf000.png,1,0\nf001.png,many,0\n", r"labels.csv:3: field 'count' must be a number"),
    ("frame,count,incident\nf000.png,-2,0\n", r"labels.csv:2: field 'count' must be >= 0"),
    ("frame,count,incident\nf000.png,1,maybe\n", r"labels.csv:2: field 'incident' must be 0 or 1"),
    ("frame,count,incident\nmissing.png,1,0\n", r"labels.csv:2: field 'frame': cannot read image .*missing.png"),
    ("frame,count,incident\n", r"no labelled rows"),
])
def test_footage_errors_name_file_line_and_field(tmp_path, csv_text, match):
    _frames(tmp_path, 2)
    (tmp_path / "labels.csv").write_text(csv_text)
    with pytest.raises(FootageError, match=match):
        load_labelled_folder(tmp_path)


def test_footage_folder_without_labels_is_named(tmp_path):
    with pytest.raises(FootageError, match="label file not found"):
        load_labelled_folder(tmp_path)


def test_synthetic_set_is_reproducible_and_independent_of_workers():
    a = synthetic_set(range(4), n_frames=6, width=64, height=48, workers=1)
    b = synthetic_set(range(4), n_frames=6, width=64, height=48, workers=2)
    assert len(a) == 24
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.count, b.count)
    assert set(a.kind) <= {"calm", "crowd", "dispersal", "fall"}
