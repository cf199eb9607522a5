"""The dashboard contract with a real Mosquitto and the real service (IdentityCodec stand-in for
CKKS, as in the other plumbing tests): dropped results visible in the retained state and in Home
Assistant, discovery ids unique and reversible with availability and expiry, per-alert event
numbers that make the documented de-duplication rule give the true level."""
from __future__ import annotations

import itertools
import json
import random
import re
import time

from backend_decryptor import alerts
from backend_decryptor.catalog import StaticCatalog
from protected_nn.model_card import parse_card
from backend_decryptor.publish import camera_of_object_id, ha_object_id
from backend_decryptor.rules_config import AlertRules
from backend_decryptor.service import Service
from tests.support.backend import CARD, FP, MODEL, IdentityCodec, config, handled, message, rules, wait_for
from tests.support.backend import MQTTTestClient as MqttClient

BOUNDED = {"outputs": [{**CARD["outputs"][0], "max": 100.0}, CARD["outputs"][1]]}


def test_discovery_ids_are_unique_and_reversible():
    cameras = ["cam.1", "cam_1", "cam-1", "cam1", "Cam1", "a._-b", "_", ".", "x" * 64, "cam_2e"]
    ids = [ha_object_id(c) for c in cameras]
    assert len(set(ids)) == len(cameras), ids                      # cam.1 and cam_1 used to collide
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)    # what Home Assistant accepts
    assert [camera_of_object_id(i) for i in ids] == cameras
    assert ha_object_id("cam-7") == "fhe_edge_cam-7"               # plain ids unchanged
    rng = random.Random(1)
    alphabet = "abcXYZ019._-"
    for _ in range(2000):
        c = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        assert camera_of_object_id(ha_object_id(c)) == c


def test_event_numbers_make_the_documented_dedup_rule_give_the_true_level():
    """Issue 16: raised high, updated very_high, high, very_high, high, cleared. A consumer keeping
    per alert id only the event with the highest event_no sees the true level even when the
    broker duplicates and reorders (the old rule, first per (id, event), showed very_high)."""
    rule_set = AlertRules.model_validate({"crowd": {"threshold": 10, "hysteresis": 3, "consecutive": 1,
                                                     "levels": {"low": 0, "high": 10, "very_high": 20}},
                                          "incident": {"enabled": False}}).for_camera("c")
    card = parse_card("m", CARD)
    from backend_decryptor.readings import read_outputs
    import numpy as np
    state, events = alerts.CameraState(), []
    for t, count in enumerate([12, 25, 14, 22, 15, 1]):
        state, evs = alerts.step(rule_set, state, read_outputs(card, np.array([count, -5.0]), "crowd_count", None), t)
        events += [alerts.alert_json(e) for e in evs]
    assert [(e["event"], e["level"], e["event_no"]) for e in events] == [
        ("raised", "high", 1), ("updated", "very_high", 2), ("updated", "high", 3),
        ("updated", "very_high", 4), ("updated", "high", 5), ("cleared", "low", 6)]
    rng = random.Random(7)
    for n in range(1, len(events) + 1):                           # every prefix of the stream...
        delivered = events[:n] + rng.sample(events[:n], k=min(n, 3))  # ...with duplicates...
        rng.shuffle(delivered)                                     # ...in any order
        latest: dict = {}
        for e in delivered:                                        # the rule in docs/backend.md
            if e["event_no"] > latest.get(e["id"], {"event_no": 0})["event_no"]:
                latest[e["id"]] = e
        assert latest[events[0]["id"]] == events[n - 1]
    # A state persisted before event numbers existed continues above the raise.
    old = alerts.CameraState(crowd_alert="a1", crowd_level="high", crowd_streak=3)
    _, [ev] = alerts.step(rule_set, old, read_outputs(card, np.array([25.0, -5.0]), "crowd_count", None), 9)
    assert ev.meta["event_no"] == 2


def test_dropped_results_show_in_the_retained_state_and_home_assistant(tmp_path, broker, monkeypatch):
    """Issue 11: a camera whose results are all dropped as implausible must not just go quiet."""
    from backend_decryptor import publish
    monkeypatch.setattr(publish, "DROP_REPUBLISH_S", 0.0)   # republish on every drop (default: 10 s)
    cfg = config(tmp_path, broker, alerts={"home_assistant": {"enabled": True}, "state_interval": 20})
    svc = Service(cfg, rules(), catalog=StaticCatalog({MODEL: ([FP], BOUNDED)}), decryptor=IdentityCodec()).start()
    pub = MqttClient(broker)
    alerts_seen = MqttClient(broker, subscribe=["fhe-edge/alerts/#"])
    try:
        seq = itertools.count()
        for _ in range(5):
            pub.publish(*message(next(seq), count=3.0, camera="cam.1"))           # fine: state published
        for _ in range(7):
            pub.publish(*message(next(seq), count=500.0, camera="cam.1"))         # above max: dropped
        pub.publish(*message(next(seq), count=3.0, camera="cam_1"))                # a camera with a lookalike id
        wait_for(lambda: handled(svc) >= 13, what="13 messages handled")
        assert svc.metrics.value("backend_messages_rejected", reason="implausible_output") == 7
        late = MqttClient(broker, subscribe=["fhe-edge/state/#", "homeassistant/#"])
        wait_for(lambda: late.json("fhe-edge/state/cam.1") and late.json("fhe-edge/state/cam_1"), what="retained state")
        time.sleep(0.5)
        with late.lock:   # the newest per topic: the retained snapshot, or what came live after it
            retained = {t: json.loads(p) for t, p, r in late.messages}
        late.close()
        dropped = retained["fhe-edge/state/cam.1"]["dropped"]
        assert dropped["count"] == 7 and dropped["reasons"] == {"implausible_output": 7}, dropped
        assert dropped["window_s"] == 300 and dropped["last"] is not None
        assert retained["fhe-edge/state/cam_1"]["dropped"] == {"count": 0, "reasons": {}, "window_s": 300, "last": None}
        assert b"500" not in json.dumps(retained).encode()                         # never the value
        # Home Assistant: two devices (no overwrite), each with the dropped sensors, availability
        # from the camera's and the gateway's retained topics, expiry after 3 state intervals.
        configs = {t: p for t, p in retained.items() if t.startswith("homeassistant/")}
        obj = ha_object_id("cam.1")
        assert f"homeassistant/sensor/{obj}/dropped/config" in configs
        assert f"homeassistant/binary_sensor/{ha_object_id('cam_1')}/results_dropped/config" in configs
        assert len({p["device"]["identifiers"][0] for p in configs.values()}) == 2
        sensor = configs[f"homeassistant/sensor/{obj}/crowd_level/config"]
        assert [a["topic"] for a in sensor["availability"]] == ["fhe-edge/status/gw-1/cam.1",
                                                               "fhe-edge/gateway/gw-1/availability"]
        assert sensor["availability_mode"] == "all" and sensor["expire_after"] == 60
        assert configs[f"homeassistant/sensor/{obj}/dropped/config"]["json_attributes_topic"] == "fhe-edge/state/cam.1"
        assert alerts_seen.json("fhe-edge/alerts/") == []                           # dropped results raise nothing
    finally:
        pub.close()
        alerts_seen.close()
        svc.stop()


def test_published_alerts_carry_event_numbers(tmp_path, broker):
    svc = Service(config(tmp_path, broker), rules(), catalog=StaticCatalog({MODEL: ([FP], CARD)}),
                  decryptor=IdentityCodec()).start()
    watcher = MqttClient(broker, subscribe=["fhe-edge/alerts/#"])
    pub = MqttClient(broker)
    try:
        for seq, count in enumerate([15, 15, 15, 0]):
            pub.publish(*message(seq, count=float(count)))
        wait_for(lambda: len(watcher.json("fhe-edge/alerts/")) >= 2, what="raised and cleared")
        got = [(a["event"], a["event_no"]) for a in watcher.json("fhe-edge/alerts/")]
        assert got == [("raised", 1), ("cleared", 2)], got
        # The history keeps them, so an alert republished from the outbox carries the same number.
        assert [alerts.alert_json(a.event)["event_no"] for a in svc.db.alerts()] == [1, 2]
    finally:
        pub.close()
        watcher.close()
        svc.stop()


def test_drop_republishing_is_rate_limited_per_camera_but_a_new_reason_shows_at_once():
    from backend_decryptor.config import HomeAssistantConfig
    from backend_decryptor.drops import DropWindow
    from backend_decryptor.publish import Publisher

    class Recorder:                 # stands in for the MQTT receiver: records what would be sent
        def __init__(self):
            self.sent = []

        def publish(self, topic, payload, qos=0, retain=False):
            self.sent.append((topic, json.loads(payload)))

    now = [1000.0]
    rec = Recorder()
    pub = Publisher(rec, "p", HomeAssistantConfig(), drops=DropWindow(clock=lambda: now[0]))
    base = lambda: alerts.public_state("c", None, alerts.CameraState())   # noqa: E731
    pub.dropped("c", "implausible_output", base)
    pub.dropped("c", "implausible_output", base)                          # same reason, 0 s later: held
    assert [s["dropped"]["count"] for _, s in rec.sent] == [1]
    pub.dropped("c", "decrypt_failed", base)                              # a new reason: at once
    now[0] += 10
    pub.dropped("c", "implausible_output", base)                          # 10 s on: the counts refresh
    pub.dropped("c", "replayed", base)                                    # not a result problem: ignored
    assert [s["dropped"]["reasons"] for _, s in rec.sent] == [
        {"implausible_output": 1}, {"decrypt_failed": 1, "implausible_output": 2},
        {"decrypt_failed": 1, "implausible_output": 3}]
    now[0] += 301                                                         # out of the window
    assert pub.drops.summary("c") == {"count": 0, "reasons": {}, "window_s": 300.0, "last": None}
