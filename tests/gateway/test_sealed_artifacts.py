"""The gateway workers' copy of a verified bundle (edge_agent/sealed_artifacts.py) and what a
worker keeps of it: the kernel refuses to change the copy, a member that differs from the
verified digest is refused (in a real spawned worker too, which then never becomes ready),
parts of a member are read only after it was checked whole, and an EdgeModel keeps no reference
to the bundle's bytes once loaded, from either source, while giving the same results."""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from edge_agent.metrics import Metrics
from edge_agent.pool import InferenceJob, Model, WorkerPool
from edge_agent.sealed_artifacts import SealedArtifacts, seal
from protected_nn.artifacts import MEMBERS, ModelArtifacts
from protected_nn.errors import BundleError
from tests.support.fake_models import fake_artifacts

MODEL_CLASS = "tests.gateway.test_sealed_artifacts:ReadsEveryMember"


class ReadsEveryMember:
    """Loaded in a worker as EdgeModel is: every member through `member`; infers their sizes."""

    def __init__(self, artifacts):
        self.sizes = [len(artifacts.member(name)) for name in MEMBERS]

    def infer(self, tensor) -> bytes:
        return repr(self.sizes).encode()


def _manifest(artifacts, **digests) -> dict:
    """The members part of a bundle manifest for `artifacts`, with the given digests instead."""
    return {"members": {n: {"sha256": digests.get(n) or hashlib.sha256(artifacts.member(n)).hexdigest()}
                        for n in MEMBERS}}


def test_the_copy_is_sealed_and_reads_back_the_verified_members():
    a = fake_artifacts(1)
    sealed = seal(a.as_members())
    assert isinstance(sealed, SealedArtifacts)
    assert sealed.as_members() == a.as_members() and sealed.key_fingerprint == a.key_fingerprint
    with pytest.raises(PermissionError):
        os.pwrite(sealed.fd, b"x", 0)             # not even the daemon can change it
    with pytest.raises(PermissionError):
        os.ftruncate(sealed.fd, 1)
    sealed.close()


def test_a_member_that_differs_from_the_verified_digest_is_refused():
    a = fake_artifacts(2)
    manifest = _manifest(a, params="0" * 64)
    sealed = seal(a.as_members(), manifest)
    assert sealed.member("plan") == a.plan
    with pytest.raises(BundleError, match="'params' differs from the verified bundle"):
        sealed.member("params")
    with pytest.raises(BundleError, match="read in part before it was checked whole"):
        sealed.read_span("params", 0, 4)


def test_parts_are_read_within_a_checked_member_only():
    a = fake_artifacts(3)
    sealed = seal(a.as_members())
    sealed.member("params")
    assert sealed.read_span("params", 3, 5) == a.params[3:8]
    with pytest.raises(BundleError, match="outside member 'params'"):
        sealed.read_span("params", len(a.params) - 2, 5)


def test_an_unsealed_or_short_file_is_refused():
    fd = os.memfd_create("not-sealed", os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, b"x" * 100)
        index = {name: (0, 10, "0" * 64) for name in MEMBERS}
        with pytest.raises(BundleError, match="not sealed"):
            SealedArtifacts(fd, index)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_SEAL)
        with pytest.raises(BundleError, match="outside the file"):
            SealedArtifacts(fd, {**index, "params": (90, 11, "0" * 64)})
    finally:
        os.close(fd)


def _pool(artifacts):
    return WorkerPool(Model(artifacts, "sealed", "0" * 16), 1, 4, _Results(), Metrics(),
                      model_class=MODEL_CLASS).start()


class _Results(list):
    def __call__(self, job, payload, model):
        self.append(payload)


def test_a_spawned_worker_loads_from_the_sealed_copy_and_so_does_its_replacement():
    a = fake_artifacts(4)
    pool = _pool(seal(a.as_members()))
    expected = repr([len(a.member(n)) for n in MEMBERS]).encode()
    try:
        for n in (1, 2):
            deadline = time.monotonic() + 60
            while pool.ready_workers < 1:
                assert time.monotonic() < deadline, "the worker did not become ready"
                time.sleep(0.05)
            pool.submit(InferenceJob("cam", np.zeros((1, 1, 2, 2), np.float32), time.time()))
            while len(pool.on_result) < n:
                assert time.monotonic() < deadline, "no result"
                time.sleep(0.05)
            assert pool.on_result[-1] == expected
            if n == 1:            # the daemon's copy outlives its workers: a replacement reads it too
                os.kill(pool.worker_pids()[0], 9)
                while pool.restarts < 1:
                    assert time.monotonic() < deadline, "the killed worker was not replaced"
                    time.sleep(0.05)
    finally:
        pool.stop(timeout=5)


def test_a_worker_refuses_a_copy_that_does_not_verify(caplog):
    a = fake_artifacts(5)
    manifest = _manifest(a, rotation_keys=hashlib.sha256(b"another bundle's keys").hexdigest())
    pool = _pool(seal(a.as_members(), manifest))
    try:
        with caplog.at_level(logging.ERROR, logger="edge_agent.pool"):
            deadline = time.monotonic() + 60
            while "differs from the verified bundle" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        assert "load: BundleError: bundle member 'rotation_keys' differs from the verified bundle" in caplog.text
        assert pool.ready_workers == 0
    finally:
        pool.stop(timeout=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from protected_nn import api
    from tests.support.tiny_models import frame_model
    return api.protect(frame_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx"),
                       options=api.ProtectOptions(progress=False))


def test_an_edge_model_keeps_no_reference_to_the_bundle_bytes(tiny):
    from protected_nn.api import EdgeModel, OwnerModel
    a = tiny.artifacts
    given = ModelArtifacts(**a.as_members())      # the same bytes, in an object only this test holds
    gone = weakref.ref(given)
    held = [name for name in MEMBERS if name != "model_card"]     # the card it keeps: ~100 bytes
    before = {name: sys.getrefcount(a.member(name)) for name in held}
    in_memory = EdgeModel(given)
    # A view of the parameters (or of any member) kept by the model would hold its bytes alive.
    assert {name: sys.getrefcount(a.member(name)) for name in held} == before
    del given
    assert gone() is None, "the model keeps the artifacts it was built from"
    sealed = seal(a.as_members())
    from_copy = EdgeModel(sealed)
    sealed.close()             # as a worker does once loaded: the model needs nothing of it
    x = np.random.default_rng(0).uniform(0, 1, in_memory.input_shape).astype(np.float32)
    owner = OwnerModel(a, tiny.secret_key)
    y_memory, y_copy = owner.decrypt(in_memory.infer(x)), owner.decrypt(from_copy.infer(x))
    assert np.max(np.abs(y_memory - y_copy)) < 1e-3 * max(1.0, float(np.ptp(y_memory)))
    assert from_copy.model_card.to_json() == in_memory.model_card.to_json()
    assert from_copy.key_fingerprint == a.key_fingerprint


def test_the_daemon_hands_on_exactly_the_members_it_verified(tmp_path):
    from edge_agent.bundle_watch import load_bundle
    from protected_nn import bundle
    key = bundle.generate_owner_key()
    a = fake_artifacts(6)
    bundle.write_bundle(tmp_path / "m.bundle", "m", a, key)
    model, manifest = load_bundle(tmp_path / "m.bundle", key.public_key())
    assert isinstance(model.artifacts, SealedArtifacts)
    assert model.artifacts.as_members() == a.as_members()
    assert {n: e[2] for n, e in model.artifacts.index.items()} == \
        {n: e["sha256"] for n, e in manifest["members"].items()}
    views = bundle.read_bundle_members(tmp_path / "m.bundle", key.public_key())[1]
    assert {n: bytes(v) for n, v in views.items()} == a.as_members()


def test_where_no_memfd_can_be_written_the_workers_get_bytes(tmp_path):
    """RLIMIT_FSIZE (a unit's LimitFSIZE) applies to memfds too: the bundle still runs, copied."""
    import resource
    import subprocess
    code = ("import logging; logging.basicConfig()\n"
            "from edge_agent.sealed_artifacts import seal\n"
            "from tests.support.fake_models import fake_artifacts\n"
            "a = fake_artifacts(7)\n"
            "s = seal(a.as_members())\n"
            "assert s == a, type(s)\n"
            "print(type(s).__name__)\n")
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))  # noqa: E731
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         preexec_fn=limit, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ModelArtifacts"
    assert "cannot keep the bundle in a sealed memfd ([Errno 27] File too large)" in out.stderr
