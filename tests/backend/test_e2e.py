"""End to end with REAL encrypted results: a tiny ONNX model whose two outputs mimic (crowd count,
incident logit) is protected with protected_nn.api.protect into a real store; the "gateway" side
encrypts inputs with EdgeModel.infer and publishes envelopes to a real Mosquitto; the service
decrypts in its process pool and raises/clears alerts. Skipped while api.protect is a stub."""
from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from backend_decryptor.catalog import StoreCatalog
from backend_decryptor.service import Service
from tests.support.backend import config, handled, rules, wait_for
from tests.support.backend import MQTTTestClient as MqttClient
from tests.support.tiny_models import crowd_model

api = pytest.importorskip("protected_nn.api")
onnx = pytest.importorskip("onnx")
MODEL = "crowd-e2e"


def protect_into(store_root, onnx_path):
    from backend_decryptor.store import Store
    try:
        prot = api.protect(onnx_path)
    except NotImplementedError:
        pytest.skip("protected_nn.api.protect is not implemented yet")
    Store(store_root).add_model(MODEL, prot, hashlib.sha256(onnx_path.read_bytes()).hexdigest())
    return prot


def inference(edge, seq: int, count: float, logit: float, camera="cam-1") -> tuple[str, bytes]:
    from protected_nn import envelope
    x = np.array([[count / 30.0, (logit + 5.0) / 10.0, 0.0, 0.0]], np.float32)
    from tests.support.gateway_keys import key_for
    env = envelope.Envelope(MODEL, edge.key_fingerprint, "gw-1", camera, seq, time.time(), edge.infer(x))
    return f"fhe-edge/infer/gw-1/{camera}", envelope.encode(env, key_for("gw-1"))


@pytest.fixture(scope="module")
def protected_store(tmp_path_factory):
    """One protected model in a store template, and real encrypted payloads for a few readings
    (an envelope around a reused payload is still a distinct message: own sequence and time)."""
    root = tmp_path_factory.mktemp("e2e")
    onnx_path = root / "tiny.onnx"
    crowd_model(onnx_path)
    prot = protect_into(root / "store", onnx_path)
    edge = api.EdgeModel(prot.artifacts)
    payloads = {(c, l): edge.infer(np.array([[c / 30.0, (l + 5.0) / 10.0, 0, 0]], np.float32))
                for c, l in [(3, -4), (15, -4), (15, 3)]}
    return root / "store", edge.key_fingerprint, payloads


def envelope_for(fp: str, payload: bytes, seq: int, camera="cam-1", gateway="gw-1", model=MODEL, t=None):
    from protected_nn import envelope
    env = envelope.Envelope(model, fp, gateway, camera, seq, time.time() if t is None else t, payload)
    from tests.support.gateway_keys import key_for
    return f"fhe-edge/infer/{gateway}/{camera}", envelope.encode(env, key_for(gateway))


def real_service(tmp_path, broker, store_template, client_id="backend-1", **over):
    import shutil
    if not (tmp_path / "store").exists():
        shutil.copytree(store_template, tmp_path / "store")
    over = {"decrypt": {"workers": 1}, **over}
    over["checks"] = {"max_message_bytes": 1 << 20, **over.get("checks", {})}
    cfg = config(tmp_path, broker, client_id=client_id, **over)
    return Service(cfg, rules()).start()


def test_two_replicas_split_200_real_results_none_lost_or_doubled(tmp_path, broker, protected_store):
    store, fp, payloads = protected_store
    replicas = [real_service(tmp_path, broker, store, client_id=f"backend-{n}") for n in "ab"]
    pub = MqttClient(broker)
    try:
        sent = [pub.c.publish(*envelope_for(fp, payloads[(3, -4)], seq, camera=f"cam-{seq % 4}"), qos=1)
                for seq in range(200)]
        for info in sent:
            info.wait_for_publish(10)
        wait_for(lambda: sum(handled(r) for r in replicas) >= 200, timeout=90, what="200 handled")
        time.sleep(0.5)
        processed = [r.metrics.value("backend_messages_processed") for r in replicas]
        assert sum(processed) == 200 and all(p > 0 for p in processed), processed
        assert sum(handled(r) for r in replicas) == 200  # nothing rejected: no message came twice
        assert sum(c["messages"] for c in replicas[0].db.counters().values()) == 200
    finally:
        pub.close()
        for r in replicas:
            r.stop()


def test_restart_with_real_results_re_raises_nothing(tmp_path, broker, protected_store):
    store, fp, payloads = protected_store
    pub = MqttClient(broker)
    svc = real_service(tmp_path, broker, store, client_id="backend-r")
    first = 0.0
    try:
        for seq in range(30):  # crowd high throughout: one alert, raised at the 2nd message
            pub.publish(*envelope_for(fp, payloads[(15, -4)], seq))
        wait_for(lambda: handled(svc) >= 10, timeout=60)
        svc.stop(timeout=3.5)
        first = svc.metrics.value("backend_messages_processed")
        for seq in range(30, 40):
            pub.publish(*envelope_for(fp, payloads[(15, -4)], seq))
        svc = real_service(tmp_path, broker, store, client_id="backend-r")
        wait_for(lambda: first + handled(svc) >= 40, timeout=60, what="all 40 after the restart")
        for seq in range(5):
            pub.publish(*envelope_for(fp, payloads[(15, -4)], seq))
        wait_for(lambda: first + handled(svc) >= 45, timeout=30)
        assert first + svc.metrics.value("backend_messages_processed") == 40
        assert svc.metrics.value("backend_messages_rejected", reason="replayed") == 5
        assert [(a.event.type, a.event.event) for a in svc.db.alerts()] == [("crowd", "raised")]
    finally:
        pub.close()
        svc.stop()


def test_bad_messages_rejected_between_real_results(tmp_path, broker, protected_store):
    store, fp, payloads = protected_store
    svc = real_service(tmp_path, broker, store, checks={"allowed_gateways": ["gw-1", "gw-2"],
                                                         "max_message_bytes": 100_000})
    pub = MqttClient(broker)
    try:
        good = payloads[(3, -4)]
        topic, first = envelope_for(fp, good, 1)
        bad = {
            "bad_magic": (topic, b"\x00" * 64),
            "truncated": (topic, first[:12]),
            "length_mismatch": (topic, first[:-100]),
            "too_large": envelope_for(fp, good + b"\0" * 100_000, 900),
            "replayed": envelope_for(fp, good, 1),
            "unknown_model": envelope_for(fp, good, 901, model="no-such-model"),
            "unknown_key": envelope_for("0123456789abcdef", good, 902),
            "gateway_not_allowed": envelope_for(fp, good, 903, gateway="gw-9"),
            "clock_skew": envelope_for(fp, good, 904, t=time.time() - 7200),
            "decrypt_failed": envelope_for(fp, good[: len(good) // 2], 905),
        }
        pub.publish(topic, first)
        for i, (reason, (t, data)) in enumerate(bad.items()):
            pub.publish(t, data)
            pub.publish(*envelope_for(fp, good, 10 + i))
        total = 1 + 2 * len(bad)
        wait_for(lambda: handled(svc) >= total, timeout=60, what=f"{total} handled")
        assert svc.metrics.value("backend_messages_processed") == 1 + len(bad)
        for reason in bad:
            assert svc.metrics.value("backend_messages_rejected", reason=reason) == 1, reason
    finally:
        pub.close()
        svc.stop()


def test_real_encrypted_results_raise_and_clear_alerts(tmp_path, broker):
    onnx_path = tmp_path / "tiny.onnx"
    crowd_model(onnx_path)
    prot = protect_into(tmp_path / "store", onnx_path)
    edge = api.EdgeModel(prot.artifacts)
    cfg = config(tmp_path, broker, decrypt={"workers": 1}, checks={"max_message_bytes": 1 << 20})
    svc = Service(cfg, rules(), catalog=StoreCatalog(cfg.store, refresh_interval=0.2)).start()
    watcher = MqttClient(broker, subscribe=["fhe-edge/alerts/#", "fhe-edge/state/#"])
    pub = MqttClient(broker)
    try:
        # crowd threshold 10, K=2, hysteresis 2; incident p=0.8 (logit 1.39), K=2
        script = [(5, -4), (15, 3), (16, 3), (15, -4), (9, -4), (7, -4), (4, -4)]
        for seq, (count, logit) in enumerate(script):
            pub.publish(*inference(edge, seq, count, logit))
        wait_for(lambda: handled(svc) >= len(script), timeout=60, what="encrypted inferences handled")
        assert svc.metrics.value("backend_messages_processed") == len(script)
        events = [(a.event.type, a.event.event, a.event.time) for a in svc.db.alerts()]
        kinds = [(t, e) for t, e, _ in events]
        assert kinds == [("crowd", "raised"), ("incident", "raised"), ("incident", "cleared"), ("crowd", "cleared")]
        wait_for(lambda: len(watcher.json("fhe-edge/alerts/cam-1")) == 4, what="alerts on MQTT")
        published = watcher.json("fhe-edge/alerts/cam-1")
        assert [(a["type"], a["event"]) for a in published] == kinds
        assert {a["id"] for a in published if a["type"] == "crowd"} == \
               {a.event.id for a in svc.db.alerts() if a.event.type == "crowd"}
        state = watcher.json("fhe-edge/state/cam-1")[-1]
        assert state["crowd"] == {"level": "low", "alert": None} and state["incident"]["active"] is False
        # key rotation while running: a new key for the same model; old and new results both decrypt
        new = protect_into(tmp_path / "store", onnx_path)
        new_edge = api.EdgeModel(new.artifacts)
        assert new_edge.key_fingerprint != edge.key_fingerprint
        time.sleep(0.3)  # past the catalog's refresh interval
        pub.publish(*inference(new_edge, 100, 3, -4))
        pub.publish(*inference(edge, 101, 3, -4))
        wait_for(lambda: handled(svc) >= len(script) + 2, timeout=60)
        assert svc.metrics.value("backend_messages_processed") == len(script) + 2
    finally:
        pub.close()
        watcher.close()
        svc.stop()
