"""Load the signed bundle, and pick up a replaced one without a restart.

The file is checked every `poll_s` seconds (mtime, size, inode) and at once on SIGHUP. A new
file is read into memory once and verified from those bytes (so what is verified is what runs,
even if the file changes again meanwhile). A bundle that is unsigned, signed by someone else or
altered is refused with a logged reason and a counted metric, and the running model stays.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

from protected_nn.bundle import load_owner_public_key, read_bundle
from protected_nn.errors import ProtectedNNError

from edge_agent.pool import Model

log = logging.getLogger(__name__)


def load_model(bundle_path: Path, owner_key) -> Model:
    """Read and verify one bundle; BundleError (a ProtectedNNError) when it must not run."""
    data = Path(bundle_path).read_bytes()
    manifest, artifacts = read_bundle(data, owner_key)
    return Model(artifacts=artifacts, model_id=str(manifest["model_id"]),
                 key_fingerprint=artifacts.key_fingerprint)


def _file_identity(path: Path):
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return None


class BundleWatcher:
    def __init__(self, bundle_path: Path, owner_key_path: Path, poll_s: float,
                 on_new_model: Callable[[Model], None], metrics):
        self.bundle_path = Path(bundle_path)
        self.owner_key = load_owner_public_key(owner_key_path)
        self.poll_s = poll_s
        self.on_new_model = on_new_model
        self.metrics = metrics
        self._identity = None
        self._check_now = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bundle-watch", daemon=True)

    def load_initial(self) -> Model:
        """The bundle the daemon starts with; raises if it is missing or refused."""
        self._identity = _file_identity(self.bundle_path)
        try:
            model = load_model(self.bundle_path, self.owner_key)
        except (ProtectedNNError, OSError):
            self.metrics.bundle_loads.labels(result="refused").inc()
            raise
        self.metrics.bundle_loads.labels(result="loaded").inc()
        return model

    def start(self) -> "BundleWatcher":
        self._thread.start()
        return self

    def request_check(self) -> None:
        """SIGHUP: look at the file now (safe to call from a signal handler)."""
        self._check_now.set()

    def stop(self) -> None:
        self._stop.set()
        self._check_now.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.is_set():
            forced = self._check_now.wait(self.poll_s)
            self._check_now.clear()
            if self._stop.is_set():
                return
            identity = _file_identity(self.bundle_path)
            if identity is None or (identity == self._identity and not forced):
                continue
            self._identity = identity
            self._try_load()

    def _try_load(self) -> None:
        try:
            model = load_model(self.bundle_path, self.owner_key)
        except (ProtectedNNError, OSError) as exc:
            log.error("new bundle %s REFUSED, the running model stays: %s", self.bundle_path, exc)
            self.metrics.bundle_loads.labels(result="refused").inc()
            return
        log.info("new bundle %s verified: model %s (key %s)", self.bundle_path, model.model_id,
                 model.key_fingerprint)
        self.metrics.bundle_loads.labels(result="loaded").inc()
        self.on_new_model(model)
