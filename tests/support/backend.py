"""Shared helpers for the backend tests (checked by tests/backend/test_identity_codec.py).

`IdentityCodec` is a stand-in for CKKS used ONLY by the plumbing tests (split, replay, restart,
checks, retained state): its "payload" is the output vector as little-endian float64, so those
tests exercise the MQTT/queue/SQLite plumbing and rules without real ciphertexts. The end-to-end
tests in tests/backend/test_e2e.py use real encrypted results from protected_nn.api.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt

from backend_decryptor.catalog import StaticCatalog
from backend_decryptor.config import BackendConfig
from backend_decryptor.rules_config import AlertRules
from protected_nn import envelope
from protected_nn.errors import ResultError
from tests.support.gateway_keys import key_for, public_keys

MODEL = "crowd-v1"
FP = "00112233aabbccdd"
CARD = {"outputs": [{"name": "crowd_count", "index": 0, "kind": "count"},
                    {"name": "incident", "index": 1, "kind": "logit"}]}
RULES = {"crowd": {"threshold": 10, "hysteresis": 2, "consecutive": 2,
                   "levels": {"low": 0, "high": 10}},
         "incident": {"probability": 0.8, "consecutive": 2, "cooldown": 60}}


class IdentityCodec:
    """Plumbing-test decryptor: payload = float64 output vector (NOT encryption)."""

    def decrypt(self, model_id: str, fingerprint: str, payload: bytes) -> np.ndarray:
        if len(payload) % 8:
            raise ResultError("identity payload is not a float64 vector")
        return np.frombuffer(payload, "<f8").reshape(1, -1)


class CountingCodec(IdentityCodec):
    """Counts decryptions, to prove rejected messages never reach the pool (in-process pool only)."""
    calls = 0

    def decrypt(self, model_id, fingerprint, payload):
        CountingCodec.calls += 1
        return super().decrypt(model_id, fingerprint, payload)


def identity_payload(count: float, incident_logit: float = -5.0) -> bytes:
    return np.array([count, incident_logit], "<f8").tobytes()


def catalog() -> StaticCatalog:
    return StaticCatalog({MODEL: ([FP], CARD)})


def config(tmp_path, broker, client_id="backend-1", **over) -> BackendConfig:
    data = {"store": str(tmp_path / "store"), "state_db": str(tmp_path / "state.db"),
            "mqtt": {"host": broker.host, "port": broker.port, "client_id": client_id, "max_in_flight": 8},
            # Every test gateway signs with tests.support.gateway_keys; cameras are bound on first use.
            "checks": {"allowed_gateways": ["gw-*"], "max_message_bytes": 4096, "max_clock_skew": 300,
                       "gateway_keys": public_keys(), "cameras_required": False},
            "decrypt": {"workers": 0, "timeout": 30},
            # The plumbing tests publish hundreds of messages of one gateway within a second; the
            # per-gateway limit is what tests/backend/test_limits.py tests, not what these do.
            "limits": {"per_gateway_rate": None}}
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return BackendConfig.model_validate(data)


def rules(**over) -> AlertRules:
    return AlertRules.model_validate({**RULES, **over})


def message(seq: int, count: float = 0.0, logit: float = -5.0, *, gateway="gw-1", camera="cam-1",
            model=MODEL, fp=FP, t: float | None = None, payload: bytes | None = None,
            signer=None) -> tuple[str, bytes]:
    """A result envelope signed by `gateway`'s test key (or by `signer`; False = unsigned)."""
    env = envelope.Envelope(model, fp, gateway, camera, seq, time.time() if t is None else t,
                            identity_payload(count, logit) if payload is None else payload)
    key = key_for(gateway) if signer is None else (signer or None)
    return f"fhe-edge/infer/{gateway}/{camera}", envelope.encode(env, key)


class MQTTTestClient:
    """A test-side MQTT 5 client: publishes QoS 1 and records what it receives."""
    __test__ = False

    def __init__(self, broker, subscribe: list[str] = (), client_id: str = ""):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self._subs = list(subscribe)
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        if not self._subs:
            self.ready.set()
        assert self.ready.wait(10), "test client did not connect/subscribe"

    def _on_connect(self, client, userdata, flags, rc, props):
        if self._subs:
            client.subscribe([(s, 1) for s in self._subs])

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def json(self, prefix: str) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t.startswith(prefix)]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def handled(service) -> float:
    m = service.metrics
    rejected = sum(s.value for metric in m.rejected.collect() for s in metric.samples
                   if s.name.endswith("_total"))
    return m.value("backend_messages_processed") + rejected
