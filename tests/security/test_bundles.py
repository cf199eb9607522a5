"""100 random single-byte changes anywhere in a real signed bundle, each dropped in place of the
running daemon's bundle (atomic rename + SIGHUP, the operator's reload path): all 100 refused,
the running model untouched - results keep flowing under the original model id and decrypt on
the owner side, no worker is restarted. Real parts: the gateway daemon as a subprocess, a
GStreamer RTSP camera, Mosquitto."""
from __future__ import annotations

import os
import random
import signal
import time

import pytest

from protected_nn import bundle
from tests.support.edge_daemon import Collector, Daemon, protected_owner
from tests.support.rtsp_camera import gstreamer_available

pytestmark = [pytest.mark.skipif(not gstreamer_available(), reason="GStreamer RTSP server not installed"),
              pytest.mark.broker("persistent")]
CHANGES = 100


@pytest.fixture(scope="module")
def owner():
    return protected_owner()


def _wait_metric(d: Daemon, name: str, at_least: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = d.metric(name)
        if value >= at_least:
            return value
        assert d.proc.poll() is None, d.output()
        time.sleep(0.02)
    d.proc.send_signal(signal.SIGUSR1)          # thread dump into the log, for the report
    time.sleep(1)
    raise AssertionError(f"{name} stayed below {at_least}: {d.output()}")


def test_100_random_byte_changes_refused_and_the_running_model_untouched(tmp_path, owner, broker, camera):
    sub = Collector(broker)
    d = Daemon(tmp_path, owner, broker, {"cam-a": camera.url}, bundle_poll_s=60)  # reload by SIGHUP only
    try:
        d.wait_ready()
        before = sub.results(1, timeout=60)[0]
        original = d.bundle.read_bytes()
        rng = random.Random(3)
        refused = 'edge_agent_bundle_loads_total{result="refused"}'
        loaded = 'edge_agent_bundle_loads_total{result="loaded"}'
        assert d.metric(refused) == 0 and d.metric(loaded) == 1
        positions = []
        for n in range(1, CHANGES + 1):
            data = bytearray(original)
            pos = rng.randrange(len(data))
            data[pos] = (data[pos] + rng.randrange(1, 256)) % 256      # always a different byte
            positions.append(pos)
            tmp = d.bundle.with_name("model.bundle.new")
            tmp.write_bytes(bytes(data))
            os.replace(tmp, d.bundle)
            d.proc.send_signal(signal.SIGHUP)
            _wait_metric(d, refused, n, timeout=20)
        assert d.metric(refused) == CHANGES and d.metric(loaded) == 1, "a changed bundle was loaded"
        assert (tmp_path / "daemon.log").read_text().count("REFUSED") == CHANGES
        assert d.metric("edge_agent_worker_restarts_total") == 0
        # positions spread over the whole file: manifest, members, signature, zip directory
        assert min(positions) < len(original) * 0.05 and max(positions) > len(original) * 0.95
        after = sub.results(3, timeout=60)
        assert all(e.model_id == "tiny-v1" and e.sequence > before.sequence for e in after)
        assert all(owner.decrypt(e.payload).shape == (1, 2) for e in after)
        # the original bytes, put back, are accepted again (the refusals were about the changes)
        tmp = d.bundle.with_name("model.bundle.new")
        tmp.write_bytes(original)
        os.replace(tmp, d.bundle)
        d.proc.send_signal(signal.SIGHUP)
        _wait_metric(d, loaded, 2, timeout=30)
        assert d.terminate() < 10
    finally:
        d.close()
        sub.close()


def test_bundle_reader_refuses_every_single_byte_change_of_a_small_region(owner):
    """Exhaustive over the manifest and the signature (the bytes an attacker would aim at): every
    position, one changed value each, through read_bundle with the owner key."""
    data = bundle.build_bundle("tiny-v1", owner.protected.artifacts, owner.signing_key)
    pub = owner.signing_key.public_key()
    start = data.index(b"manifest.json") - 30
    end = data.index(b'"members"') + 200
    sig_at = data.rindex(b"signature")
    regions = list(range(max(0, start), end)) + list(range(sig_at, min(len(data), sig_at + 120)))
    for pos in regions:
        changed = bytearray(data)
        changed[pos] ^= 0x01
        with pytest.raises(bundle.BundleError):
            bundle.read_bundle(bytes(changed), pub)
