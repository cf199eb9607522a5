"""The gateway's worker pool with real worker processes and a plumbing stand-in model (the
encrypted model's own tests are elsewhere): a worker that dies holding a frame is replaced and the
frame retried once; a frame that kills its worker twice is dropped and counted, and the pool keeps
serving the other frames; a full queue drops the oldest frame of the same camera."""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from edge_agent.metrics import Metrics
from edge_agent.pool import InferenceJob, Model, WorkerPool

MODEL_CLASS = "tests.gateway.test_pool:StandInModel"
POISON = -1.0            # a frame whose first value is this kills its worker, every time


class StandInModel:
    """Loaded in each worker: 'infers' in 0.3 s, result = the frame's first value as text."""

    def __init__(self, artifacts):
        self.artifacts = artifacts

    def infer(self, tensor: np.ndarray) -> bytes:
        if float(tensor.flat[0]) == POISON:
            os._exit(9)                      # as if the kernel's OOM killer took the worker
        time.sleep(0.3)
        return repr(float(tensor.flat[0])).encode()


class Results:
    def __init__(self):
        self.got: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, job, payload, model) -> None:
        with self.lock:
            self.got.append(payload)

    def wait(self, n: int, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= n:
                    return list(self.got)
            time.sleep(0.05)
        raise AssertionError(f"only {self.got} of {n} results")


def _pool(workers: int, queue_size: int = 8):
    results, metrics = Results(), Metrics()
    pool = WorkerPool(Model(None, "stand-in", "0" * 16), workers, queue_size, results, metrics,
                      model_class=MODEL_CLASS).start()
    deadline = time.monotonic() + 60
    while pool.ready_workers < workers:
        assert time.monotonic() < deadline, "workers did not become ready"
        time.sleep(0.05)
    return pool, results, metrics


def _job(value: float, camera: str = "cam") -> InferenceJob:
    return InferenceJob(camera, np.full((1, 1, 2, 2), value, np.float32), time.time())


def _dropped(metrics: Metrics, reason: str, camera: str = "cam") -> float:
    return metrics.frames_dropped.labels(camera=camera, reason=reason)._value.get()


def test_a_worker_killed_holding_a_frame_is_replaced_and_the_frame_retried():
    pool, results, metrics = _pool(1)
    try:
        pool.submit(_job(1.0))
        time.sleep(0.1)                                   # the worker holds the frame now
        victim = pool.worker_pids()[0]
        os.kill(victim, 9)
        assert results.wait(1, 60) == [b"1.0"]            # retried on the replacement
        assert pool.restarts == 1 and victim not in pool.worker_pids()
        assert _dropped(metrics, "worker_died") == 0
    finally:
        pool.stop(timeout=5)


def test_a_sigterm_to_the_process_group_leaves_the_workers_to_the_daemon():
    """A SIGTERM sent to the whole group (a terminal, a supervisor without KillMode=mixed) must
    not kill the workers under the daemon: it would count as a crash and restart one mid-stop."""
    pool, results, _ = _pool(1)
    try:
        worker = pool.worker_pids()[0]
        os.kill(worker, 15)
        time.sleep(0.5)
        pool.submit(_job(2.0))
        assert results.wait(1, 60) == [b"2.0"]
        assert pool.restarts == 0 and pool.worker_pids() == [worker]
    finally:
        pool.stop(timeout=5)
    assert not os.path.exists(f"/proc/{worker}") or "zombie" in open(f"/proc/{worker}/status").read()


def test_a_frame_that_kills_its_worker_twice_is_dropped_and_counted_and_the_rest_flow():
    pool, results, metrics = _pool(2)
    try:
        pool.submit(_job(POISON))
        for v in (1.0, 2.0, 3.0):
            pool.submit(_job(v))
        assert sorted(results.wait(3, 60)) == [b"1.0", b"2.0", b"3.0"]
        deadline = time.monotonic() + 30
        while _dropped(metrics, "worker_died") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _dropped(metrics, "worker_died") == 1 and pool.restarts == 2
        assert pool.alive()
        pool.submit(_job(4.0))                            # replaced workers serve new frames
        assert results.wait(4, 60)[-1] == b"4.0"
    finally:
        pool.stop(timeout=5)


def test_a_full_queue_drops_the_oldest_frame_of_the_same_camera():
    pool, results, metrics = _pool(1, queue_size=2)
    try:
        pool.submit(_job(0.0, "busy"))                    # taken by the worker at once
        time.sleep(0.1)
        pool.submit(_job(1.0, "other"))
        pool.submit(_job(2.0, "busy"))
        pool.submit(_job(3.0, "busy"))                    # queue full: "busy" 2.0 goes, not "other"
        got = results.wait(3, 30)
        assert sorted(got) == [b"0.0", b"1.0", b"3.0"]
        assert _dropped(metrics, "queue_full", "busy") == 1
        assert _dropped(metrics, "queue_full", "other") == 0
    finally:
        pool.stop(timeout=5)
