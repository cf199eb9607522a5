"""Every bad message is rejected with its reason, before decryption, while the valid messages around
it are all processed. Real Mosquitto; PLUMBING test: the decryptor is the IdentityCodec stand-in
(payload = float64 vector), because what is tested here is the checks and the queue, not CKKS."""
from __future__ import annotations

import time


from backend_decryptor.service import Service
from tests.support.backend import (
    FP, CountingCodec, IdentityCodec, catalog, config, handled, message, rules, wait_for)
from tests.support.backend import MQTTTestClient as MqttClient


def test_each_bad_message_rejected_with_reason_and_valid_ones_processed(tmp_path, broker):
    CountingCodec.calls = 0
    svc = Service(config(tmp_path, broker, checks={"allowed_gateways": ["gw-1", "gw-2"]}), rules(),
                  catalog=catalog(), decryptor=CountingCodec()).start()
    pub = MqttClient(broker)
    try:
        now = time.time()
        topic, good = message(1)
        bad = [
            ("bad_magic", (topic, b"GARBAGE" * 10)),
            ("truncated", (topic, good[:20])),
            ("trailing_bytes", (topic, good + b"xx")),
            ("too_large", (topic, good[:-16] + b"\0" * 5000)),
            ("bad_version", (topic, good[:4] + bytes([9]) + good[5:])),
            ("replayed", message(1)),                                   # same sequence as the first valid one
            ("unknown_model", message(101, model="other-model")),
            ("unknown_key", message(102, fp="ffffffffffffffff")),
            ("gateway_not_allowed", message(103, gateway="gw-evil")),
            ("clock_skew", message(104, t=now - 3600)),
            ("clock_skew", message(105, t=now + 3600)),
            ("topic_mismatch", ("fhe-edge/infer/gw-2/cam-1", message(106)[1])),
            ("decrypt_failed", message(108, payload=b"abc")),           # passes the checks; fails decryption
        ]
        valid_seqs = []
        pub.publish(*message(1))
        valid_seqs.append(1)
        for i, (_, (t, data)) in enumerate(bad):
            pub.publish(t, data)
            seq = 200 + i
            pub.publish(*message(seq, count=1.0))
            valid_seqs.append(seq)
        total = len(bad) + len(valid_seqs)
        wait_for(lambda: handled(svc) >= total, what=f"{total} messages handled")
        time.sleep(0.3)
        m = svc.metrics
        assert m.value("backend_messages_processed") == len(valid_seqs)
        expected: dict[str, int] = {}
        for reason, _ in bad:
            expected[reason] = expected.get(reason, 0) + 1
        for reason, n in expected.items():
            assert m.value("backend_messages_rejected", reason=reason) == n, reason
        assert svc.db.rejections() == expected
        assert svc.db.counters()["cam-1"]["messages"] == len(valid_seqs)
        # only the valid messages and the one whose payload failed decryption reached the decryptor
        assert CountingCodec.calls == len(valid_seqs) + 1
    finally:
        pub.close()
        svc.stop()


def test_empty_allow_list_rejects_everything(tmp_path, broker):
    svc = Service(config(tmp_path, broker, checks={"allowed_gateways": []}), rules(),
                  catalog=catalog(), decryptor=IdentityCodec()).start()
    pub = MqttClient(broker)
    try:
        for seq in range(3):
            pub.publish(*message(seq))
        wait_for(lambda: handled(svc) >= 3)
        assert svc.metrics.value("backend_messages_rejected", reason="gateway_not_allowed") == 3
        assert svc.metrics.value("backend_messages_processed") == 0
    finally:
        pub.close()
        svc.stop()


def test_fingerprint_list_includes_rotated_keys(tmp_path, broker):
    """Key rotation: the old and the new fingerprint both decrypt while old messages drain."""
    from backend_decryptor.catalog import StaticCatalog
    from tests.support.backend import CARD, MODEL
    new_fp = "99887766554433aa"
    cat = StaticCatalog({MODEL: ([FP, new_fp], CARD)})
    svc = Service(config(tmp_path, broker), rules(), catalog=cat, decryptor=IdentityCodec()).start()
    pub = MqttClient(broker)
    try:
        pub.publish(*message(1, fp=FP))
        pub.publish(*message(2, fp=new_fp))
        pub.publish(*message(3, fp="0000000000000000"))
        wait_for(lambda: handled(svc) >= 3)
        assert svc.metrics.value("backend_messages_processed") == 2
        assert svc.metrics.value("backend_messages_rejected", reason="unknown_key") == 1
    finally:
        pub.close()
        svc.stop()


class CrashingCodec(IdentityCodec):
    """Kills its worker process on one particular payload, like a native crash in a decryptor."""

    def decrypt(self, model_id, fingerprint, payload):
        if payload == b"crash!!!":
            import os
            os._exit(3)
        return super().decrypt(model_id, fingerprint, payload)


def test_a_payload_that_kills_a_decryption_worker_costs_only_that_message(tmp_path, broker):
    svc = Service(config(tmp_path, broker, decrypt={"workers": 1}), rules(),
                  catalog=catalog(), decryptor=CrashingCodec()).start()
    pub = MqttClient(broker)
    try:
        pub.publish(*message(1))
        pub.publish(*message(2, payload=b"crash!!!"))
        for seq in range(3, 8):
            pub.publish(*message(seq))
        wait_for(lambda: handled(svc) >= 7, timeout=60)
        assert svc.metrics.value("backend_messages_rejected", reason="decrypt_failed") == 1
        assert svc.metrics.value("backend_messages_processed") == 6
    finally:
        pub.close()
        svc.stop()
