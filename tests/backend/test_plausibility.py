"""Plausibility ranges from the model card, and what a published alert carries.

End to end with REAL encryption (like tests/backend/test_e2e.py): the tiny model y = [30 x0, 10 x1 - 5]
gets a card with ranges (crowd count <= 40, incident logit in [-8, 8]); encrypted results whose
decrypted values lie outside (a gateway forging or probing) must be dropped as
`implausible_output` and raise nothing, though the rules WOULD have raised on them; the plausible
results around them are processed and the alert they raise is published without `sequence`."""
from __future__ import annotations

import hashlib
import json
import math
import time

import numpy as np
import pytest

from backend_decryptor import alerts
from backend_decryptor.readings import ImplausibleOutput, check_plausible
from protected_nn.model_card import CardError, parse_card
from backend_decryptor.service import Service
from tests.support.backend import config, handled, rules, wait_for
from tests.support.backend import MQTTTestClient as MqttClient

MODEL = "crowd-bounded"
OUTPUTS = [{"name": "crowd_count", "index": 0, "kind": "count", "max": 40},
           {"name": "incident", "index": 1, "kind": "logit", "min": -8, "max": 8}]


# ----------------------------------------------------------------------------- units
def test_card_ranges_defaults_and_errors():
    card = parse_card("m", {"outputs": OUTPUTS + [
        {"name": "p", "index": 2, "kind": "probability"},
        {"name": "cls", "index": 3, "kind": "class_scores", "size": 2, "min": -20, "max": 20},
        {"name": "scaled", "index": 5, "kind": "count", "scale": 100.0, "max": 50}]})
    assert card.output("crowd_count").bounds() == (-0.5, 40)         # count: min -0.5 by default
    assert card.output("p").bounds() == (-math.inf, math.inf)        # others: none by default
    ok = np.array([0.0, 7.9, 0.5, 19.0, -19.0, 0.49])
    check_plausible(card, ok)
    for i, value, why in [(0, 40.5, "crowd_count"), (0, -0.6, "crowd_count"), (1, -8.1, "incident"),
                          (4, 21.0, "cls"), (5, 0.51, "scaled"), (2, float("nan"), "p"), (1, float("inf"), "incident")]:
        bad = ok.copy()
        bad[i] = value
        with pytest.raises(ImplausibleOutput, match=why) as exc:
            check_plausible(card, bad)
        assert str(value) not in str(exc.value)                      # decrypted values never logged
    check_plausible(card, ok[:2])                                    # absent outputs: not this check's job
    for bad_range in ({"min": 5, "max": 1}, {"min": float("nan")}, {"max": float("-inf")}):
        with pytest.raises(CardError, match="not a range"):
            parse_card("m", {"outputs": [{"name": "c", "index": 0, "kind": "count", **bad_range}]})


def test_alert_json_leaves_the_sequence_in_the_history_only():
    ev = alerts.AlertEvent("a1", "cam-1", None, "crowd", "raised", "high", 1.0, 1.0,
                           {"gateway": "gw-1", "model_id": "m", "sequence": 18231})
    assert "sequence" not in alerts.alert_json(ev)
    assert alerts.alert_json(ev)["gateway"] == "gw-1"
    assert alerts.alert_json(ev, public=False)["sequence"] == 18231


# ----------------------------------------------------------------------------- real encryption
@pytest.fixture(scope="module")
def bounded_model(tmp_path_factory):
    import onnx
    from backend_decryptor.store import Store
    from protected_nn import api
    from tests.support.tiny_models import crowd_model
    root = tmp_path_factory.mktemp("bounded")
    path = root / "tiny.onnx"
    crowd_model(path)
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "fhe_edge.outputs":
            prop.value = json.dumps(OUTPUTS)
    onnx.save(model, str(path))
    prot = api.protect(path)
    Store(root / "store").add_model(MODEL, prot, hashlib.sha256(path.read_bytes()).hexdigest())
    return root / "store", api.EdgeModel(prot.artifacts)


def envelope_for(edge, seq: int, count: float, logit: float) -> tuple[str, bytes]:
    from protected_nn import envelope
    x = np.array([[count / 30.0, (logit + 5.0) / 10.0, 0.0, 0.0]], np.float32)
    env = envelope.Envelope(MODEL, edge.key_fingerprint, "gw-1", "cam-1", seq, time.time(), edge.infer(x))
    from tests.support.gateway_keys import key_for
    return "fhe-edge/infer/gw-1/cam-1", envelope.encode(env, key_for("gw-1"))


def test_implausible_decrypted_outputs_are_dropped_and_raise_nothing(tmp_path, broker, bounded_model):
    import shutil
    store, edge = bounded_model
    shutil.copytree(store, tmp_path / "store")
    cfg = config(tmp_path, broker, decrypt={"workers": 1}, checks={"max_message_bytes": 1 << 20})
    svc = Service(cfg, rules()).start()
    watcher = MqttClient(broker, subscribe=["fhe-edge/alerts/#"])
    pub = MqttClient(broker)
    try:
        # crowd threshold 10, K=2; incident p=0.8 (logit 1.39), K=2: each implausible pair below
        # WOULD raise an alert if it reached the rules
        implausible = [(60, -4), (60, -4), (5, 12), (5, 12), (-3, -4), (-3, -4)]
        plausible = [(3, -4), (15, -4), (16, -4)]     # the last two raise the crowd alert
        script = plausible[:1] + implausible + plausible[1:]
        for seq, (count, logit) in enumerate(script):
            pub.publish(*envelope_for(edge, seq, count, logit))
        wait_for(lambda: handled(svc) >= len(script), timeout=60, what="encrypted results handled")
        m = svc.metrics
        assert m.value("backend_messages_rejected", reason="implausible_output") == len(implausible)
        assert m.value("backend_messages_processed") == len(plausible)
        stored = svc.db.alerts()
        assert [(a.event.type, a.event.event) for a in stored] == [("crowd", "raised")]
        raised_by = len(script) - 1
        assert stored[0].event.meta["sequence"] == raised_by          # the history keeps the sequence
        wait_for(lambda: watcher.json("fhe-edge/alerts/cam-1"), what="the alert on MQTT")
        (published,) = watcher.json("fhe-edge/alerts/cam-1")
        assert "sequence" not in published and published["id"] == stored[0].event.id
        assert published["gateway"] == "gw-1" and published["model_id"] == MODEL
    finally:
        pub.close()
        watcher.close()
        svc.stop()
