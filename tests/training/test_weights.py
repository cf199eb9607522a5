"""Per-kind incident weights of the trainer (training/fit.py, `--pos-weight-kind`) and the
recall-spread tool (training/eval_spread.py)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.eval_spread import recall_spread  # noqa: E402
from training.fit import Weights, positive_weights, weighted_bce  # noqa: E402
from training.train import _kind_weights  # noqa: E402


def test_weighted_bce_equals_torch_pos_weight_for_one_weight():
    g = torch.Generator().manual_seed(0)
    logit, target = torch.randn(64, generator=g), (torch.rand(64, generator=g) < 0.3).float()
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))(logit, target)
    got = weighted_bce(logit, target, torch.full((64,), 3.0))
    assert torch.allclose(got, ref, atol=1e-6)


def test_positive_weights_by_kind_override_the_default():
    w = positive_weights(np.array(["calm", "fall", "dispersal", "real"]), Weights(incident_pos_weight=3.0, pos_weight_by_kind={"fall": 6.0}))
    assert w.tolist() == [3.0, 6.0, 3.0, 3.0]
    # a fall positive weighs twice a dispersal positive; negatives are not weighted
    logit = torch.zeros(3)
    per = [float(weighted_bce(logit[:1], torch.tensor([t]), w[i:i + 1])) for i, t in ((1, 1.0), (2, 1.0), (1, 0.0))]
    assert per[0] == pytest.approx(2 * per[1]) and per[2] == pytest.approx(per[1] / 3)


@pytest.mark.parametrize("arg, message", [("jump=3", "kind must be one of"), ("fall=lots", "weight must be a number"),
                                          ("fall", "weight must be a number")])
def test_bad_kind_weight_is_named(arg, message):
    with pytest.raises(SystemExit, match=message):
        _kind_weights([arg])


def test_kind_weights_parse():
    assert _kind_weights(["fall=6", "dispersal=2.5"]) == {"fall": 6.0, "dispersal": 2.5}


def test_recall_spread_counts_whole_sequences_and_pairs_models():
    # 2 sets x 4 sequences x 10 frames; sequences 0, 4 are falls (frames 5-9 incident), 1, 5 dispersals
    kinds = np.repeat(np.array(["fall", "dispersal", "calm", "crowd"] * 2), 10)
    seq = np.repeat(np.arange(8), 10)
    incident = np.where(np.isin(kinds, ["fall", "dispersal"]) & (np.arange(80) % 10 >= 5), 1.0, 0.0)
    a = np.where(incident > 0, 1.0, -1.0)                  # finds every incident, no false alarm
    b = np.where((incident > 0) & (kinds == "dispersal"), 1.0, -1.0)   # misses every fall
    res = recall_spread({"a": a, "b": b}, {"incident": incident, "kind": kinds, "seq": seq}, 2, 4)
    first = res["sets"][0]
    assert first["models"]["a"]["fall"]["recall"] == 1.0 and first["models"]["b"]["fall"]["recall"] == 0.0
    assert first["models"]["a"]["fall"]["sequences"] == 1 and first["models"]["a"]["fall"]["frames"] == 5
    assert first["paired"]["a - b"]["fall"]["diff"] == 1.0 and first["paired"]["a - b"]["dispersal"]["diff"] == 0.0
    assert first["models"]["b"]["false_alarm_rate"] == 0.0
    assert res["pooled"]["a"]["fall"] == 1.0 and res["pooled"]["b"]["dispersal"] == 1.0
