"""Decryption in a pool of worker processes (CKKS decryption + decoding is CPU-bound).

Each worker holds a `Decryptor`: a picklable object with `decrypt(model_id, fingerprint, payload)
-> np.ndarray`. The production one, `StoreDecryptor`, keeps one `OwnerModel` per (model id, key
fingerprint), loaded from the store on first use (or at start by `preload`) and cached by the
worker's one `Store`, so several models and several keys of one model (old and new during a
rotation) are served at once.

The decryptor is injectable: the plumbing tests and the benchmark's transport figures pass a
trivial codec so they can exercise the queueing without real ciphertexts.

A worker that dies (e.g. a native crash on a hostile payload) breaks a ProcessPoolExecutor; the pool
then starts fresh workers and retries the affected jobs once, so one bad message cannot take the
service or other messages down with it.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class StoreDecryptor:
    """Decrypts with the owner keys in the protected model store; only the path is pickled.

    Each process (every worker, or the service itself with `workers: 0`) opens the store once, on
    first use, without creating it: the store's own cache (`Store.owner_model`) then keeps one
    `OwnerModel` per key version for the life of the worker. A store that is not there is an
    error naming it, never an empty store made at a mistyped path."""

    def __init__(self, store_root: str | Path):
        self.store_root = str(store_root)
        self._opened = None

    def __getstate__(self):
        return {"store_root": self.store_root}

    def __setstate__(self, state):
        self.store_root = state["store_root"]
        self._opened = None

    def _store(self):
        if self._opened is None:
            from backend_decryptor.store import Store
            self._opened = Store(self.store_root, create=False)
        return self._opened

    def preload(self) -> None:
        """Load every key the store holds now, so the first messages do not wait for key loading."""
        store = self._store()
        for model_id in store.model_ids():
            for fp in store.fingerprints(model_id):
                store.owner_model(model_id, fp)

    def decrypt(self, model_id: str, fingerprint: str, payload: bytes) -> np.ndarray:
        return self._store().owner_model(model_id, fingerprint).decrypt(payload)


_worker_decryptor = None


def _init_worker(decryptor) -> None:
    global _worker_decryptor
    _worker_decryptor = decryptor
    if hasattr(decryptor, "preload"):
        try:
            decryptor.preload()
        except Exception:  # a bad key in the store must not stop the worker; it fails per message
            log.exception("preloading keys failed; keys load on first use")


def _init_process_worker(decryptor) -> None:
    """A worker process also ends when the service does, however it ends: a SIGKILLed service
    leaves its pool's queues open in the workers, so they would otherwise wait forever (orphans
    holding the owner's keys in memory)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        def _exit_with_parent() -> None:
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(0)
        threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    _init_worker(decryptor)


def _decrypt_in_worker(model_id: str, fingerprint: str, payload: bytes) -> np.ndarray:
    return _worker_decryptor.decrypt(model_id, fingerprint, payload)


def _ping() -> bool:
    return True


@dataclass
class DecryptJob:
    """One result's decryption in the pool; submitted once more if it broke the pool."""
    model_id: str
    fingerprint: str
    payload: bytes
    future: Future
    retried: bool = False


class DecryptPool:
    def __init__(self, decryptor, workers: int, timeout: float = 60.0):
        self.decryptor = decryptor
        self.workers = workers
        self.timeout = timeout
        self._lock = threading.Lock()
        self._executor = self._start()

    def _start(self):
        if self.workers == 0:
            # In-process: one thread, so decryptors need not be thread-safe.
            _init_worker(self.decryptor)
            return ThreadPoolExecutor(1, thread_name_prefix="decrypt")
        # spawn, not fork: the service process runs MQTT and SQLite threads that fork would copy mid-state.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_process_worker, initargs=(self.decryptor,))

    def warm_up(self) -> None:
        """Start every worker (and preload keys) before the service says it is ready."""
        futures = [self._executor.submit(_ping) for _ in range(max(1, self.workers))]
        for f in futures:
            f.result(timeout=max(self.timeout, 120))

    def submit(self, model_id: str, fingerprint: str, payload: bytes) -> DecryptJob:
        return DecryptJob(model_id, fingerprint, payload, self._submit(model_id, fingerprint, payload))

    def _submit(self, model_id, fingerprint, payload) -> Future:
        with self._lock:
            try:
                return self._executor.submit(_decrypt_in_worker, model_id, fingerprint, payload)
            except BrokenProcessPool:
                self._restart_locked()
                return self._executor.submit(_decrypt_in_worker, model_id, fingerprint, payload)

    def _restart_locked(self) -> None:
        log.error("a decryption worker died; starting fresh workers")
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._start()

    def result(self, job: DecryptJob) -> np.ndarray:
        """The decrypted tensor; raises the decryptor's exception, TimeoutError, or BrokenProcessPool
        if the job broke the pool twice (then it is the job's own fault)."""
        try:
            return job.future.result(timeout=self.timeout)
        except BrokenProcessPool:
            if job.retried:
                raise
            with self._lock:
                if job.future is not None and self._executor_is_broken():
                    self._restart_locked()
            job.retried = True
            job.future = self._submit(job.model_id, job.fingerprint, job.payload)
            return job.future.result(timeout=self.timeout)

    def _executor_is_broken(self) -> bool:
        return bool(getattr(self._executor, "_broken", False))

    def close(self) -> None:
        with self._lock:
            self._executor.shutdown(wait=True, cancel_futures=False)
