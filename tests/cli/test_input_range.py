"""Issue 16: `edge-agent infer` warns on inputs outside the range the model was calibrated on, but
not on the 1/255 rounding of real frames: the shipped model's calibration frames span [0, 254/255],
and every real frame with a white pixel (1.0) warned before."""
from __future__ import annotations

import numpy as np
import pytest

from edge_agent.infer_cmd import range_warning
from protected_nn.model_card import parse_card

CARD = parse_card(None, {"calibrated_input_range": [0.0, 254 / 255]})


@pytest.mark.parametrize("high, warns", [(254 / 255, False), (1.0, False), (1.02, True), (5.0, True), (255.0, True)])
def test_warns_only_beyond_the_rounding_of_real_frames(high, warns):
    x = np.array([0.0, 0.5, high], np.float32)
    warning = range_warning(x, CARD, "x.npy")
    assert (warning is not None) == warns, warning
    if warns:
        assert "outside the calibrated input range [0, 0.996078]" in warning


def test_below_the_range_warns_too():
    assert range_warning(np.array([-0.05, 0.5], np.float32), CARD, "x.npy") is not None


def test_a_model_without_a_recorded_range_never_warns():
    assert range_warning(np.array([1e6], np.float32), parse_card(None, {}), "x.npy") is None
