"""Per-gateway rate limit, per-gateway camera allow-list and rate-limited drop logging
(docs/threat-model.md: the backend as a decryption oracle). Units for the token buckets and the
camera check; then real Mosquitto with the IdentityCodec stand-in (plumbing: what is tested is
which messages reach the decryptor, not CKKS)."""
from __future__ import annotations

import logging
import time

import pytest

from backend_decryptor.checks import MessageChecker
from backend_decryptor.config import BackendConfig, ChecksConfig, LimitsConfig
from backend_decryptor.rate_limit import GatewayRateLimiter, LogLimiter
from backend_decryptor.service import Service
from tests.support.backend import CountingCodec, catalog, config, handled, message, rules, wait_for
from tests.support.backend import MQTTTestClient as MqttClient


# ----------------------------------------------------------------------------- units
def test_bucket_allows_burst_then_rate_measured_on_capture_time():
    lim = GatewayRateLimiter(rate=2.0, burst=5, max_clock_skew=300)
    t = 1000.0
    assert [lim.allow("gw-1", t, now=t) for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.allow("gw-2", t, now=t)                       # another gateway has its own bucket
    assert not lim.allow("gw-1", t + 0.4, now=t)             # 0.4 s x 2/s = 0.8 token: not yet
    assert lim.allow("gw-1", t + 0.5, now=t)                 # 1.0 token
    assert not lim.allow("gw-1", t + 0.5, now=t)
    assert not lim.allow("gw-1", t - 10, now=t)              # going back in time earns nothing
    assert sum(lim.allow("gw-1", t + 100, now=t) for _ in range(10)) == 5   # refill capped at burst


def test_a_backlog_produced_within_the_rate_passes_whatever_the_delivery_speed():
    """A gateway back from a broker outage delivers 5 minutes of results at once: capture times
    4/s, delivered in one go. Limit 5/s, burst 3: all pass. The same count stamped with (nearly)
    the same capture time is a flood: only the burst passes."""
    lim = GatewayRateLimiter(rate=5.0, burst=3, max_clock_skew=300)
    start = 1000.0
    assert all(lim.allow("gw-1", start + i * 0.25, now=start + 300) for i in range(1200))
    assert sum(lim.allow("gw-2", start + i * 1e-4, now=start) for i in range(1200)) == 3


def test_a_gateway_cannot_run_ahead_of_the_clock_beyond_the_burst():
    """Claiming capture times up to max_clock_skew in the future (the skew check's limit) gains at
    most one burst: after that, the long-run rate is the wall clock's."""
    lim = GatewayRateLimiter(rate=10.0, burst=30, max_clock_skew=300)
    now, accepted = 10_000.0, 0
    for second in range(600):                    # the attacker always claims now + skew
        for _ in range(100):
            accepted += lim.allow("gw-x", now + second + 300, now=now + second)
    assert accepted <= 600 * 10 + 2 * 30, accepted


def test_idle_buckets_are_forgotten_only_when_equivalent_to_fresh_ones():
    lim = GatewayRateLimiter(rate=1.0, burst=5, max_clock_skew=60, prune_every=0)
    for i in range(100):
        lim.allow(f"gw-{i}", 1000.0, now=1000.0)
    assert len(lim) == 100
    lim.allow("gw-new", 1064.0, now=1064.0)      # 64 s < skew 60 + burst/rate 5: kept
    assert len(lim) == 101
    lim.allow("gw-new", 1066.0, now=1066.0)
    assert len(lim) == 1


def test_log_limiter_holds_back_a_flood_and_reports_how_many(caplog):
    clock = [0.0]
    lim = LogLimiter(logging.getLogger("limits-test"), per_second=1.0, burst=3, clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="limits-test"):
        logged = [lim.warning("rate_limited", "dropped %d", i) for i in range(100)]
        assert sum(logged) == 3
        assert lim.warning("bad_magic", "other reason")      # its own budget
        clock[0] = 2.0
        assert lim.warning("rate_limited", "dropped %d", 100)
        assert "(97 more 'rate_limited' drops not logged)" in caplog.records[-1].getMessage()
        lim.warning("rate_limited", "x")
        lim.warning("rate_limited", "y")                       # held back
        clock[0] = 20.0
        lim.flush()
        assert caplog.records[-1].getMessage() == "1 more 'rate_limited' drops not logged (log rate limit)"
    assert len(caplog.records) == 7   # 3 + other reason + 1 with the count + "x" + the flush


def test_camera_allow_list_per_gateway_with_patterns():
    def checker(**checks):
        return MessageChecker(ChecksConfig(allowed_gateways=["gw-*"], **checks), "fhe-edge", catalog(),
                              lambda *a: False)
    c = checker(gateway_cameras={"gw-1": ["cam-1", "cam-2*"], "gw-*": ["cam-shared"]})
    assert c.camera_allowed("gw-1", "cam-1") and c.camera_allowed("gw-1", "cam-2b")
    assert c.camera_allowed("gw-1", "cam-shared")               # union of every matching entry
    assert not c.camera_allowed("gw-1", "cam-9")
    assert not c.camera_allowed("gw-2", "cam-1") and c.camera_allowed("gw-2", "cam-shared")
    open_ = checker(gateway_cameras={"gw-1": ["cam-1"]}, cameras_required=False)
    assert open_.camera_allowed("gw-2", "anything")             # no entry, not required: any free camera
    strict = checker(gateway_cameras={"gw-1": ["cam-1"]})      # cameras_required is the default
    assert not strict.camera_allowed("gw-2", "cam-1") and strict.camera_allowed("gw-1", "cam-1")


def test_limit_config_defaults_fit_a_normal_gateway_and_errors_are_precise():
    cfg = BackendConfig()
    assert cfg.limits.per_gateway_rate >= 5 * 2           # 5 cameras at 2 fps
    assert cfg.checks.gateway_cameras == {} and cfg.checks.cameras_required is True
    assert LimitsConfig(per_gateway_rate=None).per_gateway_rate is None
    for bad in ({"per_gateway_rate": 0}, {"per_gateway_burst": 0}, {"rate": 5}):
        with pytest.raises(ValueError):
            LimitsConfig.model_validate(bad)
    with pytest.raises(ValueError, match="camera ids must not be blank"):
        ChecksConfig(gateway_cameras={"gw-1": [" "]})


def test_shipped_config_has_limits_and_camera_lists():
    from backend_decryptor.config import load_config
    cfg = load_config("configs/backend.yaml")
    assert cfg.limits.per_gateway_rate and cfg.checks.gateway_cameras


# ----------------------------------------------------------------------------- real broker
def test_a_flood_from_one_gateway_is_rate_limited_while_another_is_fully_processed(tmp_path, broker, caplog):
    CountingCodec.calls = 0
    cfg = config(tmp_path, broker, client_id="backend-lim", mqtt={"max_in_flight": 32},
                 limits={"per_gateway_rate": 5.0, "per_gateway_burst": 20})
    svc = Service(cfg, rules(), catalog=catalog(), decryptor=CountingCodec()).start()
    pub = MqttClient(broker)
    now = time.time()
    try:
        with caplog.at_level(logging.WARNING, logger="backend_decryptor.pipeline"):
            for i in range(150):     # gw-1 floods: 150 messages stamped within 0.15 s
                pub.c.publish(*message(i, gateway="gw-1", camera=f"cam-{i % 3}", t=now + i * 0.001), qos=1)
                if i % 10 == 0:      # gw-2 at its normal pace: capture times 1 s apart (15 messages)
                    pub.c.publish(*message(i, gateway="gw-2", camera="cam-b", t=now - 15 + i / 10), qos=1)
            # gw-3's backlog after an outage: 40 results captured at 4/s over the last 10 s, sent at once
            for i in range(40):
                pub.c.publish(*message(i, gateway="gw-3", camera="cam-c", t=now - 10 + i * 0.25), qos=1)
            total = 150 + 15 + 40
            wait_for(lambda: handled(svc) >= total, timeout=60, what=f"{total} handled")
            time.sleep(0.3)
        counters = svc.db.counters()
        gw1 = sum(counters.get(f"cam-{k}", {}).get("messages", 0) for k in range(3))
        # burst 20 + 5/s x 0.15 s of capture-time progression
        assert 20 <= gw1 <= 21, counters
        assert counters["cam-b"]["messages"] == 15 and counters["cam-c"]["messages"] == 40, counters
        m = svc.metrics
        assert m.value("backend_messages_rejected", reason="rate_limited") == 150 - gw1
        assert m.value("backend_messages_processed") == gw1 + 15 + 40   # gw-2 and gw-3: every message
        assert CountingCodec.calls == gw1 + 15 + 40                     # the dropped ones never decrypted
        assert svc.db.rejections() == {"rate_limited": 150 - gw1}
        drop_lines = [r for r in caplog.records if "rate_limited" in r.getMessage()]
        assert 1 <= len(drop_lines) <= 12, len(drop_lines)               # ~130 drops, ~10 log lines
        svc.stop()
        # QoS 1: the dropped messages were acknowledged - nothing comes back on the same session
        svc = Service(cfg, rules(), catalog=catalog(), decryptor=CountingCodec()).start()
        time.sleep(1.5)
        assert handled(svc) == 0
    finally:
        pub.close()
        svc.stop()


def test_a_camera_not_on_the_gateways_list_is_rejected(tmp_path, broker):
    CountingCodec.calls = 0
    cfg = config(tmp_path, broker, checks={"allowed_gateways": ["gw-1", "gw-2"],
                                           "gateway_cameras": {"gw-1": ["cam-1", "cam-2"]}})
    svc = Service(cfg, rules(), catalog=catalog(), decryptor=CountingCodec()).start()
    pub = MqttClient(broker)
    try:
        pub.publish(*message(1, camera="cam-1"))
        pub.publish(*message(2, camera="cam-invented"))
        pub.publish(*message(3, camera="cam-2"))
        pub.publish(*message(4, gateway="gw-2", camera="cam-invented"))   # gw-2 has no list: any camera
        wait_for(lambda: handled(svc) >= 4)
        m = svc.metrics
        assert m.value("backend_messages_rejected", reason="camera_not_allowed") == 1
        assert m.value("backend_messages_processed") == 3 and CountingCodec.calls == 3
        assert set(svc.db.counters()) == {"cam-1", "cam-2", "cam-invented"}
        assert svc.db.counters()["cam-invented"]["messages"] == 1
    finally:
        pub.close()
        svc.stop()
