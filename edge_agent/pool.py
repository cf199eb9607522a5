"""Worker processes that run the encrypted model (Pyfhel holds the GIL: processes, not threads).

The daemon process keeps the only queue: a bounded FIFO of frames. A manager thread hands one
frame at a time to each idle worker over its own pipe, so the daemon always knows which frame a
worker holds; when a worker dies, its frame is retried once on another worker and a replacement
is started. When the queue is full, the oldest frame of the same camera is dropped (counted):
fresh frames matter more than old ones. Each worker loads the model ONCE, from the artifact
bytes the daemon verified (never from the bundle path, which may change underneath): the sealed
memfd of edge_agent/sealed_artifacts.py, read member by member, so no worker keeps a copy.

A new model (bundle reload) starts a new generation: each old worker is replaced when idle.
"""
from __future__ import annotations

import collections
import importlib
import itertools
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL_CLASS = "protected_nn.api:EdgeModel"
_CTX = mp.get_context("spawn")   # never fork a process that runs capture and MQTT threads


class Msg(str, Enum):
    """Message kinds on a worker's pipe (first element of every message)."""
    READY = "ready"      # worker -> daemon: model loaded
    JOB = "job"          # daemon -> worker: (JOB, job_id, tensor)
    RESULT = "result"    # worker -> daemon: (RESULT, job_id, payload, infer_seconds)
    FAILED = "failed"    # worker -> daemon: (FAILED, job_id, reason)
    STOP = "stop"        # daemon -> worker: finish and exit


@dataclass
class InferenceJob:
    """One camera frame's model input, queued for a worker (the daemon's `submit`)."""
    camera_id: str
    tensor: np.ndarray
    capture_time: float
    enqueued: float = field(default_factory=time.monotonic)
    generation: int = 0          # model generation whose input spec produced `tensor`
    job_id: int = 0
    attempts: int = 0


@dataclass
class Model:
    """What a generation of workers runs: artifacts plus the ids the envelope needs."""
    artifacts: Any
    model_id: str
    key_fingerprint: str
    generation: int = 0
    result_key: str | None = None   # from the bundle manifest: envelope v3 if set (result_auth.py)


def _load_class(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main(conn: Connection, artifacts, model_class: str) -> None:
    # Ctrl-C in a terminal, or a SIGTERM sent to the whole process group, reaches the workers too:
    # only the daemon decides when to stop (it sends STOP after the frames inside finish, and
    # kills a worker that does not end).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        model = _load_class(model_class)(artifacts)
    except Exception as exc:
        log.error("worker %d cannot load the model: %s", os.getpid(), exc)
        conn.send((Msg.FAILED, None, f"load: {type(exc).__name__}: {exc}"))
        return
    finally:
        getattr(artifacts, "close", lambda: None)()   # loaded (or refused): the bundle is done with
    conn.send((Msg.READY, os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return       # the daemon is gone
        if msg[0] == Msg.STOP:
            return
        _, job_id, tensor = msg
        t0 = time.perf_counter()
        try:
            payload = model.infer(tensor)
        except Exception as exc:      # bad input must cost one frame, not the worker
            conn.send((Msg.FAILED, job_id, f"{type(exc).__name__}: {exc}"))
            continue
        conn.send((Msg.RESULT, job_id, bytes(payload), time.perf_counter() - t0))


@dataclass
class _Slot:
    proc: Any = None
    conn: Connection | None = None
    generation: int = -1
    ready: bool = False
    busy: InferenceJob | None = None
    retiring: bool = False
    failures: int = 0             # consecutive deaths before READY (backoff)
    next_start: float = 0.0


ResultCallback = Callable[[InferenceJob, bytes, Model], None]


class WorkerPool:
    def __init__(self, model: Model, workers: int, queue_size: int, on_result: ResultCallback,
                 metrics, model_class: str | None = None):
        self.model = model
        self.queue_size = queue_size
        self.on_result = on_result
        self.metrics = metrics
        self.model_class = model_class or DEFAULT_MODEL_CLASS
        self._slots = [_Slot() for _ in range(workers)]
        self._pending: collections.deque[InferenceJob] = collections.deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._models: dict[int, Model] = {model.generation: model}
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._accepting = True
        self._thread = threading.Thread(target=self._manage, name="worker-pool", daemon=True)
        self.restarts = 0

    # -- daemon side API --------------------------------------------------------------------------
    def start(self) -> "WorkerPool":
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def ready_workers(self) -> int:
        return sum(1 for s in self._slots if s.ready)

    def worker_pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.is_alive()]

    def submit(self, job: InferenceJob) -> None:
        with self._lock:
            if not self._accepting:
                self.metrics.frames_dropped.labels(camera=job.camera_id, reason="shutdown").inc()
                return
            job.job_id = next(self._ids)
            if len(self._pending) >= self.queue_size:
                victim = next((j for j in self._pending if j.camera_id == job.camera_id), self._pending[0])
                self._pending.remove(victim)
                self.metrics.frames_dropped.labels(camera=victim.camera_id, reason="queue_full").inc()
            self._pending.append(job)
            self.metrics.queue_depth.set(len(self._pending))
        self._wake()

    def swap_model(self, model: Model) -> None:
        """Run `model` from now on; old workers are replaced as they become idle."""
        with self._lock:
            model.generation = self.model.generation + 1
            self._models[model.generation] = model
            self.model = model
        self._wake()

    def stop(self, timeout: float = 5.0) -> None:
        """Drop queued frames, let busy workers finish (results delivered) within `timeout`."""
        with self._lock:
            self._accepting = False
            for job in self._pending:
                self.metrics.frames_dropped.labels(camera=job.camera_id, reason="shutdown").inc()
            self._pending.clear()
            self.metrics.queue_depth.set(0)
        deadline = time.monotonic() + timeout
        while any(s.busy for s in self._slots) and time.monotonic() < deadline and self.alive():
            time.sleep(0.05)
        self._stopping.set()
        self._wake()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        for slot in self._slots:
            if slot.busy:
                self.metrics.frames_dropped.labels(camera=slot.busy.camera_id, reason="shutdown").inc()
            if slot.proc is not None and slot.proc.is_alive():
                try:
                    slot.conn.send((Msg.STOP,))       # all at once; then one shared grace period
                except OSError:
                    pass
        grace = time.monotonic() + 1.0
        for slot in self._slots:
            if slot.proc is not None:
                slot.proc.join(max(0.0, grace - time.monotonic()))
            self._end_worker(slot, graceful=False)

    # -- manager thread ---------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _manage(self) -> None:
        while not self._stopping.is_set():
            try:
                self._maintain_workers()
                waitables = [self._wake_r]
                for s in self._slots:
                    if s.proc is not None:
                        waitables += [s.conn, s.proc.sentinel]
                for obj in wait(waitables, timeout=0.5):
                    if obj is self._wake_r:
                        self._wake_r.recv(4096)
                for slot in self._slots:
                    self._receive(slot)
                self._dispatch()
            except Exception:
                log.exception("worker pool manager error")
                time.sleep(0.2)

    def _start_worker(self, slot: _Slot) -> None:
        parent, child = _CTX.Pipe()
        model = self.model
        proc = _CTX.Process(target=_worker_main, args=(child, model.artifacts, self.model_class),
                            name=f"edge-worker-g{model.generation}", daemon=True)
        proc.start()
        child.close()
        slot.proc, slot.conn, slot.generation = proc, parent, model.generation
        slot.ready, slot.busy, slot.retiring = False, None, False
        log.info("worker %d started (model %s, generation %d)", proc.pid, model.model_id, model.generation)

    def _end_worker(self, slot: _Slot, graceful: bool) -> None:
        if slot.proc is None:
            return
        if graceful and slot.proc.is_alive():
            try:
                slot.conn.send((Msg.STOP,))
            except OSError:
                pass
            slot.proc.join(1.0)
        if slot.proc.is_alive():
            slot.proc.kill()
            slot.proc.join(1.0)
        slot.conn.close()
        slot.proc, slot.conn, slot.ready, slot.busy = None, None, False, None
        self.metrics.workers_ready.set(self.ready_workers)

    def _maintain_workers(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.proc is not None and not slot.proc.is_alive():
                self._worker_died(slot)
            if (slot.proc is not None and slot.generation != self.model.generation
                    and slot.busy is None):
                self._end_worker(slot, graceful=True)      # old model: replace when idle
            if slot.proc is None and now >= slot.next_start:
                self._start_worker(slot)
        in_use = {s.generation for s in self._slots} | {self.model.generation}
        for generation in [g for g in self._models if g not in in_use]:
            del self._models[generation]

    def _worker_died(self, slot: _Slot) -> None:
        code = slot.proc.exitcode
        job = slot.busy
        log.error("worker %d died (exit code %s)%s", slot.proc.pid, code,
                  f" holding a frame of camera {job.camera_id}" if job else "")
        if not slot.ready:
            slot.failures += 1       # dies while loading: back off instead of spinning
            slot.next_start = time.monotonic() + min(30.0, 0.5 * 2 ** slot.failures)
        self.restarts += 1
        self.metrics.worker_restarts.inc()
        slot.busy = None
        self._end_worker(slot, graceful=False)
        if job is not None:
            if job.attempts == 0 and not self._stopping.is_set():
                job.attempts += 1
                with self._lock:
                    self._pending.appendleft(job)
            else:
                self.metrics.frames_dropped.labels(camera=job.camera_id, reason="worker_died").inc()

    def _receive(self, slot: _Slot) -> None:
        while slot.conn is not None:
            try:
                if not slot.conn.poll():
                    return
                msg = slot.conn.recv()
            except (EOFError, OSError):
                return           # the sentinel tells us it died; handled in _maintain_workers
            kind = msg[0]
            if kind == Msg.READY:
                slot.ready, slot.failures = True, 0
                self.metrics.workers_ready.set(self.ready_workers)
            elif kind == Msg.RESULT:
                _, job_id, payload, seconds = msg
                job, slot.busy = slot.busy, None
                if job is None or job.job_id != job_id:
                    continue
                self.metrics.stage_seconds.labels(stage="infer").observe(seconds)
                try:
                    self.on_result(job, payload, self._models[slot.generation])
                except Exception:
                    log.exception("result handler failed for camera %s", job.camera_id)
            elif kind == Msg.FAILED:
                _, job_id, reason = msg
                job, slot.busy = slot.busy, None
                log.error("worker %d: %s", slot.proc.pid, reason)
                if job is not None:
                    self.metrics.frames_dropped.labels(camera=job.camera_id, reason="infer_error").inc()

    def _next_job(self, generation: int) -> InferenceJob | None:
        with self._lock:
            while self._pending:
                job = self._pending.popleft()
                self.metrics.queue_depth.set(len(self._pending))
                if job.generation == generation:
                    return job
                # Preprocessed for a model that is no longer running: its shape may not fit.
                self.metrics.frames_dropped.labels(camera=job.camera_id, reason="model_changed").inc()
        return None

    def _dispatch(self) -> None:
        for slot in self._slots:
            if not (slot.ready and slot.busy is None and slot.generation == self.model.generation):
                continue
            job = self._next_job(slot.generation)
            if job is None:
                return
            self.metrics.stage_seconds.labels(stage="queue_wait").observe(time.monotonic() - job.enqueued)
            try:
                slot.conn.send((Msg.JOB, job.job_id, job.tensor))
                slot.busy = job
            except OSError:       # the worker just died; its sentinel will be handled next round
                with self._lock:
                    self._pending.appendleft(job)
