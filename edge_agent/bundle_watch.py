"""Load the signed bundle, and pick up a replaced one without a restart.

The file is checked every `poll_s` seconds (mtime, size, inode) and at once on SIGHUP. A new
file is read into memory once - its size checked before reading, so a huge file at the bundle
path costs nothing - and verified from those bytes (so what is verified is what runs, even if
the file changes again meanwhile). A bundle that is unsigned, signed by someone else, altered,
too large, of another model or older than the running one (edge_agent/bundle_pin.py) is refused
with a logged reason and counted metrics (`edge_agent_bundle_loads_total{result="refused"}`,
`edge_agent_bundle_refused_total{reason}`), and the running model stays. Nothing a file holds
can stop the watch thread: a later valid bundle is still picked up.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

from protected_nn.artifacts import parse_model_card
from protected_nn.bundle import load_owner_public_key, read_bundle_members, read_file_bounded
from protected_nn.errors import ProtectedNNError
from protected_nn.runtime.plan_sections import read_plan

from edge_agent.bundle_pin import BundlePin, BundleRefused
from edge_agent.pool import Model
from edge_agent.sealed_artifacts import seal

log = logging.getLogger(__name__)


def load_bundle(bundle_path: Path, owner_key) -> tuple[Model, dict]:
    """Read (bounded) and verify one bundle -> (model, manifest); BundleError when it must not run
    (a plan this gateway cannot read included: protected_nn/runtime/plan_sections.py), CardError
    when its model card does not fit the schema (protected_nn/model_card.py)."""
    manifest, members = read_bundle_members(read_file_bounded(bundle_path), owner_key)
    # Here, before the bundle is pinned and handed to the workers: a plan of an unknown version or
    # malformed would otherwise replace a running model by workers that cannot load it.
    read_plan(bytes(members["plan"]))
    parse_model_card(bytes(members["model_card"]))   # a card that does not fit is refused like any other defect
    # The workers' copy: one sealed memfd, not the bytes pickled to each (sealed_artifacts.py).
    artifacts = seal(members, manifest)
    model = Model(artifacts=artifacts, model_id=str(manifest["model_id"]), key_fingerprint=artifacts.key_fingerprint,
                  result_key=manifest.get("result_key"))
    return model, manifest


def load_model(bundle_path: Path, owner_key) -> Model:
    return load_bundle(bundle_path, owner_key)[0]


def _file_identity(path: Path):
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return None


class BundleWatcher:
    def __init__(self, bundle_path: Path, owner_key_path: Path, poll_s: float,
                 on_new_model: Callable[[Model], bool | None], metrics,
                 state_dir: Path | None = None, model_id: str | None = None):
        """`on_new_model` returns False if it refused the model (then its version is not recorded).
        `state_dir`: where the accepted model id and version are recorded; `model_id`: the
        configured one (bundle_pin.py)."""
        self.bundle_path = Path(bundle_path)
        self.owner_key = load_owner_public_key(owner_key_path)
        self.poll_s = poll_s
        self.on_new_model = on_new_model
        self.metrics = metrics
        self.pin = BundlePin(state_dir, model_id)
        self.version: int | None = None
        self._identity = None
        self._check_now = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bundle-watch", daemon=True)

    def _refused(self, reason: str) -> None:
        self.metrics.bundle_loads.labels(result="refused").inc()
        self.metrics.bundle_refused.labels(reason=reason).inc()

    def _load_checked(self) -> tuple[Model, dict]:
        model, manifest = load_bundle(self.bundle_path, self.owner_key)
        self.pin.check(manifest)
        return model, manifest

    def load_initial(self) -> Model:
        """The bundle the daemon starts with; raises if it is missing or refused (also when it is
        older than, or of another model than, what this gateway ran before)."""
        self._identity = _file_identity(self.bundle_path)
        try:
            model, manifest = self._load_checked()
        except (ProtectedNNError, OSError) as exc:
            self._refused(getattr(exc, "reason", "invalid"))
            raise
        self.metrics.bundle_loads.labels(result="loaded").inc()
        self._accepted(manifest)
        return model

    def _accepted(self, manifest: dict) -> None:
        self.pin.record(manifest)
        self.version = manifest["version"]
        self.metrics.bundle_version.set(self.version)

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
            try:
                self._try_load()
            except Exception:  # MemoryError included: a bad file must never end the watch
                log.exception("new bundle %s REFUSED (unexpected error), the running model stays", self.bundle_path)
                self._refused("error")

    def _try_load(self) -> None:
        try:
            model, manifest = self._load_checked()
        except BundleRefused as exc:
            log.error("new bundle %s REFUSED (%s), the running model stays: %s", self.bundle_path, exc.reason, exc)
            self._refused(exc.reason)
            return
        except (ProtectedNNError, OSError) as exc:
            log.error("new bundle %s REFUSED, the running model stays: %s", self.bundle_path, exc)
            self._refused("invalid")
            return
        log.info("new bundle %s verified: model %s version %s (key %s)", self.bundle_path, model.model_id,
                 manifest["version"], model.key_fingerprint)
        if self.on_new_model(model) is False:
            return  # the daemon refused it (and said why); nothing recorded
        self.metrics.bundle_loads.labels(result="loaded").inc()
        self._accepted(manifest)
