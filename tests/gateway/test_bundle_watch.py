"""The gateway's bundle watcher in-process (real files, real signatures, the daemon's metrics):
rollback and cross-model swaps refused on reload and at start (also across a restart), a huge
file at the bundle path refused before reading while the watch thread keeps going."""
from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from edge_agent.bundle_pin import BundleRefused
from edge_agent.bundle_watch import BundleWatcher
from edge_agent.metrics import Metrics
from protected_nn import bundle
from tests.support.fake_models import fake_artifacts

POLL = 0.05


@pytest.fixture
def owner(tmp_path):
    key = bundle.generate_owner_key()
    bundle.save_public_key(key, tmp_path / "owner.pub")
    return key


def put(path, owner, model_id="crowd", version=1, seed=0):
    """Replace the bundle the way an operator does (temp file + rename)."""
    tmp = path.with_name(path.name + ".new")
    bundle.write_bundle(tmp, model_id, fake_artifacts(seed), owner, version=version)
    os.replace(tmp, path)


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


class Watch:
    def __init__(self, tmp_path, model_id=None):
        self.metrics = Metrics()
        self.models = []
        self.path = tmp_path / "model.bundle"
        self.w = BundleWatcher(self.path, tmp_path / "owner.pub", POLL, self._new, self.metrics,
                               state_dir=tmp_path / "state", model_id=model_id)

    def _new(self, model):
        self.models.append(model)

    def refused(self, reason):
        return value(self.metrics, "edge_agent_bundle_refused_total", reason=reason)

    def wait(self, predicate, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")


def test_reload_refuses_older_version_and_other_model_keeps_running_one(tmp_path, owner, caplog):
    caplog.set_level(logging.ERROR)
    w = Watch(tmp_path)
    put(w.path, owner, version=2, seed=2)
    first = w.w.load_initial()
    assert first.model_id == "crowd" and w.w.version == 2
    assert value(w.metrics, "edge_agent_bundle_version") == 2
    w.w.start()
    try:
        put(w.path, owner, version=1, seed=1)                       # validly signed, older key
        w.wait(lambda: w.refused("rollback") == 1, "rollback refused")
        put(w.path, owner, model_id="other", version=9, seed=3)      # validly signed, other model
        w.wait(lambda: w.refused("model_mismatch") == 1, "model swap refused")
        assert w.models == []                                       # the running model was never replaced
        assert "version 1, older than version 2" in caplog.text and "REFUSED (rollback)" in caplog.text
        assert "the model this gateway runs" in caplog.text
        put(w.path, owner, version=2, seed=2)                       # the same version again: fine
        w.wait(lambda: len(w.models) == 1, "same version accepted")
        put(w.path, owner, version=3, seed=4)                       # a newer one: fine
        w.wait(lambda: w.w.version == 3, "newer version accepted")
        assert w.models[1].key_fingerprint == fake_artifacts(4).key_fingerprint
    finally:
        w.w.stop()


def test_restart_does_not_allow_a_rollback_or_a_model_swap(tmp_path, owner):
    w = Watch(tmp_path)
    put(w.path, owner, version=3)
    w.w.load_initial()
    put(w.path, owner, version=2)                                   # swapped while the gateway was down
    again = Watch(tmp_path)
    with pytest.raises(BundleRefused, match="older than version 3"):
        again.w.load_initial()
    assert again.refused("rollback") == 1
    put(w.path, owner, model_id="other", version=5)
    with pytest.raises(BundleRefused, match="not .crowd., the model this gateway runs"):
        Watch(tmp_path).w.load_initial()
    # Switching model is a config change, and is then remembered.
    assert Watch(tmp_path, model_id="other").w.load_initial().model_id == "other"
    with pytest.raises(BundleRefused, match="not 'other', the configured model_id"):
        put(w.path, owner, model_id="crowd", version=7)
        Watch(tmp_path, model_id="other").w.load_initial()


def test_huge_file_at_the_bundle_path_is_refused_unread_and_the_watch_goes_on(tmp_path, owner, caplog):
    caplog.set_level(logging.ERROR)
    w = Watch(tmp_path)
    put(w.path, owner)
    w.w.load_initial()
    w.w.start()
    try:
        huge = tmp_path / "huge"
        with open(huge, "wb") as f:
            f.truncate(64 << 30)        # 64 GiB, sparse: more than this machine could ever hold
        os.replace(huge, w.path)
        w.wait(lambda: w.refused("invalid") == 1, "huge file refused")
        assert "exceeds the limit" in caplog.text
        assert any(t.name == "bundle-watch" for t in threading.enumerate())
        put(w.path, owner, version=2, seed=5)
        w.wait(lambda: len(w.models) == 1, "the later valid bundle")
        assert w.models[0].key_fingerprint == fake_artifacts(5).key_fingerprint
    finally:
        w.w.stop()


def test_fifo_at_the_bundle_path_does_not_block(tmp_path, owner):
    w = Watch(tmp_path)
    os.mkfifo(w.path)
    with pytest.raises(bundle.BundleError, match="not a regular file"):
        w.w.load_initial()
