"""Issue 15 items 1-3 and 9 at the service, through a real broker: results are authenticated per
gateway (signature over header and payload, checked before anything else), and a camera id belongs
to one gateway. PLUMBING test (IdentityCodec: payload = float64 outputs), because what is tested is
who may say what, not CKKS; the CKKS-level forgeries are in tests/security/test_result_checks.py and,
end to end, tests/security/test_adversarial.py."""
from __future__ import annotations

import struct
import time

import pytest

from backend_decryptor.checks import MessageChecker, Rejected
from backend_decryptor.config import BackendConfig, ChecksConfig
from backend_decryptor.storage.sqlite import StateDB
from backend_decryptor.service import Service
from protected_nn import envelope
from protected_nn.gateway_key import generate, public_key_text
from tests.support.gateway_keys import key_for, public_keys
from tests.support.backend import CountingCodec, catalog, config, handled, message, rules, wait_for
from tests.support.backend import MQTTTestClient as MqttClient

HIGH, LOW = 25.0, 0.0     # crowd threshold 10, consecutive 2, hysteresis 2 (tests.support.backend.RULES)


def relabel(data: bytes, **change) -> tuple[str, bytes]:
    """What a broker can do without keys: keep a real signature, change header fields."""
    env = envelope.decode(data)
    new = envelope.Envelope(**{**{k: getattr(env, k) for k in ("model_id", "key_fingerprint", "gateway_id",
                                                             "camera_id", "sequence", "capture_time", "payload")},
                               **change})
    forged = envelope.encode(new, generate())[:-64] + env.signature
    return f"fhe-edge/infer/{new.gateway_id}/{new.camera_id}", forged


def patch_sequence(msg: tuple[str, bytes], sequence: int) -> tuple[str, bytes]:
    """Write a raw u64 sequence (even >= 2^63, which encode refuses) into a signed envelope."""
    topic, data = msg
    at = len(data) - 64 - len(envelope.decode(data).payload) - 20
    return topic, data[:at] + struct.pack(">Q", sequence) + data[at + 8:]


def crowd_alerts(svc, camera: str) -> list[str]:
    return [s.event.event for s in svc.db.alerts(camera=camera) if s.event.type == "crowd"]


def test_forged_relabelled_spliced_and_unsigned_results_are_refused_before_any_work(tmp_path, broker):
    CountingCodec.calls = 0
    svc = Service(config(tmp_path, broker, limits={"per_gateway_rate": 2.0, "per_gateway_burst": 4}), rules(),
                  catalog=catalog(), decryptor=CountingCodec()).start()
    pub = MqttClient(broker)
    try:
        t0 = time.time()
        real = message(1, HIGH, t=t0)
        other = message(2, LOW, t=t0 + 0.5)
        attacks = [
            ("unsigned", message(50, HIGH, signer=False)),
            ("bad_signature", message(51, HIGH, signer=generate())),               # a key of its own
            ("bad_signature", message(52, HIGH, gateway="gw-1", signer=key_for("gw-2"))),  # another gateway's key
            ("unknown_gateway", message(53, HIGH, gateway="gw-unlisted")),
            ("bad_signature", relabel(real[1], sequence=60)),                        # replay, new sequence
            ("bad_signature", relabel(real[1], sequence=61, capture_time=t0 + 1)),
            ("bad_signature", relabel(real[1], camera_id="cam-2")),                  # re-labelled camera
            ("bad_signature", relabel(real[1], gateway_id="gw-2", sequence=62)),     # re-labelled gateway
            ("bad_signature", relabel(real[1], payload=envelope.decode(other[1]).payload)),  # spliced payload
            ("out_of_range", patch_sequence(message(63, HIGH), 2**63)),               # item 9
            ("out_of_range", patch_sequence(message(64, HIGH), 2**64 - 1)),
        ]
        # 40 forgeries first: had they spent gw-1's tokens (burst 4), the real results would be limited.
        for i in range(4):
            for _, (topic, data) in attacks:
                pub.publish(topic, data)
        pub.publish(*real)
        pub.publish(*other)
        total = 4 * len(attacks) + 2
        wait_for(lambda: handled(svc) >= total, what=f"{total} handled")
        time.sleep(0.3)
        m = svc.metrics
        assert m.value("backend_messages_processed") == 2
        expected: dict[str, int] = {}
        for reason, _ in attacks:
            expected[reason] = expected.get(reason, 0) + 4
        for reason, n in expected.items():
            assert m.value("backend_messages_rejected", reason=reason) == n, (reason, svc.db.rejections())
        assert CountingCodec.calls == 2                   # no forgery reached the decryptor
        assert svc.db.camera_owners() == {"cam-1": "gw-1"}   # no forgery bound a camera
        assert svc.db.alerts() == []                      # one high reading is not two
    finally:
        pub.close()
        svc.stop()


def test_another_gateway_can_neither_clear_nor_block_an_alert_of_my_camera(tmp_path, broker):
    """Issue 15 item 2: gw-2 (a real gateway with its own valid key) sends for gw-1's camera."""
    cfg = config(tmp_path, broker, checks={"allowed_gateways": ["gw-depot-*"], "cameras_required": False,
                                           "gateway_cameras": {"gw-depot-*": ["cam-depot-*"]},
                                           "gateway_keys": public_keys(["gw-depot-1", "gw-depot-2"])})
    svc = Service(cfg, rules(), catalog=catalog(), decryptor=CountingCodec()).start()
    pub = MqttClient(broker)
    try:
        t = time.time()
        mine = dict(gateway="gw-depot-2", camera="cam-depot-2")
        theirs = dict(gateway="gw-depot-1", camera="cam-depot-2")
        seq = iter(range(1, 1000))
        sent = 0
        for reading in (HIGH, HIGH):                      # two highs: gw-depot-2's camera raises an alert
            pub.publish(*message(next(seq), reading, t=t + sent, **mine))
            sent += 1
        wait_for(lambda: crowd_alerts(svc, "cam-depot-2") == ["raised"], what="the real alert")
        for _ in range(4):                                # gw-depot-1 tries to clear it
            pub.publish(*message(next(seq), LOW, t=t + sent, **theirs))
            sent += 1
        for reading in (HIGH, HIGH):                      # and interleaves to keep a new alert down
            pub.publish(*message(next(seq), reading, t=t + sent, **mine))
            pub.publish(*message(next(seq), LOW, t=t + sent + 0.5, **theirs))
            sent += 2
        wait_for(lambda: handled(svc) >= sent, what=f"{sent} handled")
        time.sleep(0.3)
        assert svc.metrics.value("backend_messages_rejected", reason="camera_taken") == 6
        assert crowd_alerts(svc, "cam-depot-2") == ["raised"]        # still raised: nothing cleared it
        assert svc.db.camera_owners() == {"cam-depot-2": "gw-depot-2"}
        # gw-depot-1 keeps its own cameras
        pub.publish(*message(next(seq), LOW, t=t + sent, gateway="gw-depot-1", camera="cam-depot-1"))
        wait_for(lambda: svc.metrics.value("backend_messages_processed") == 5, what="gw-depot-1's own camera")
    finally:
        pub.close()
        svc.stop()
    # the binding survives a restart (it is in the state DB, not in memory)
    svc = Service(cfg, rules(), catalog=catalog(), decryptor=CountingCodec()).start()
    pub = MqttClient(broker)
    try:
        pub.publish(*message(500, LOW, t=time.time(), **theirs))
        wait_for(lambda: svc.metrics.value("backend_messages_rejected", reason="camera_taken") == 1)
    finally:
        pub.close()
        svc.stop()


def test_invented_camera_ids_are_capped_per_gateway(tmp_path, broker):
    cfg = config(tmp_path, broker, checks={"max_cameras_per_gateway": 3})
    svc = Service(cfg, rules(), catalog=catalog(), decryptor=CountingCodec()).start()
    pub = MqttClient(broker)
    try:
        for i in range(10):
            pub.publish(*message(i, LOW, camera=f"cam-invented-{i}"))
        pub.publish(*message(100, LOW, camera="cam-invented-0"))      # a held camera still works
        wait_for(lambda: handled(svc) >= 11)
        assert svc.metrics.value("backend_messages_rejected", reason="too_many_cameras") == 7
        assert svc.metrics.value("backend_messages_processed") == 4
        assert len(svc.db.counters()) == 3 and len(svc.db.camera_owners()) == 3
    finally:
        pub.close()
        svc.stop()


# ----------------------------------------------------------------------------- unit level
def checker(tmp_path, **checks) -> MessageChecker:
    db = StateDB(tmp_path / "state.db")
    cfg = ChecksConfig(**{"allowed_gateways": ["gw-*"], "gateway_keys": public_keys(), **checks})
    return MessageChecker(cfg, "fhe-edge", catalog(), lambda *a: False, bind=db.bind_camera)


def test_reserved_cameras_and_first_use_binding(tmp_path):
    c = checker(tmp_path, gateway_cameras={"gw-1": ["cam-a"], "gw-*": ["cam-*"]})
    with pytest.raises(Rejected) as e:
        c.check(*message(1, gateway="gw-2", camera="cam-a"))      # reserved for gw-1 by the config
    assert e.value.reason == "camera_taken"
    c.check(*message(2, gateway="gw-2", camera="cam-b"))          # pattern: bound to gw-2 now
    with pytest.raises(Rejected) as e:
        c.check(*message(3, gateway="gw-1", camera="cam-b"))
    assert e.value.reason == "camera_taken" and "gw-2" in str(e.value)
    c.check(*message(4, gateway="gw-1", camera="cam-a"))


def test_cameras_required_is_the_default(tmp_path):
    c = checker(tmp_path, gateway_cameras={"gw-1": ["cam-a"]})
    with pytest.raises(Rejected) as e:
        c.check(*message(1, gateway="gw-2", camera="cam-z"))
    assert e.value.reason == "camera_not_allowed"


def test_config_refuses_a_camera_listed_for_two_gateways_and_bad_keys():
    with pytest.raises(ValueError, match="cam-a is listed for gateways gw-1 and gw-2"):
        ChecksConfig(gateway_cameras={"gw-1": ["cam-a"], "gw-2": ["cam-a", "cam-b"]})
    with pytest.raises(ValueError, match="gw-1: expected 'ed25519:"):
        ChecksConfig(gateway_keys={"gw-1": "ssh-ed25519 AAAA"})
    with pytest.raises(ValueError, match="32 bytes"):
        ChecksConfig(gateway_keys={"gw-1": "ed25519:AAAA"})
    with pytest.raises(ValueError, match="no patterns"):
        ChecksConfig(gateway_keys={"gw-*": public_key_text(generate())})


def test_shipped_backend_config_gives_no_gateway_all_depot_cameras():
    from backend_decryptor.config import load_config, is_pattern
    cfg: BackendConfig = load_config("configs/backend.yaml")
    assert cfg.checks.cameras_required
    for gateway, cameras in cfg.checks.gateway_cameras.items():
        assert not is_pattern(gateway) and not any(is_pattern(c) for c in cameras), (gateway, cameras)
    assert set(cfg.checks.gateway_keys) >= set(cfg.checks.gateway_cameras)
