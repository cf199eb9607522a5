"""Which model a gateway may run, and the lowest bundle version it may still accept.

A validly signed bundle can still be the wrong one: an older version (a rotated-out key, a model
the owner replaced) or another model of the same owner. So a bundle must also
- carry the configured model id (`model_id` in edge.yaml), or, when none is configured, the id of
  the first bundle this gateway ran (trust on first use, recorded in state_dir): switching a
  gateway to another model takes a config change;
- carry a `version` (signed, protected_nn/bundle.py) not lower than the highest this gateway has
  run for that model. Equal is fine (the same key version exported again).
The record is `state_dir/bundle.json` ({"model_id": pinned id, "versions": {model id: highest}}),
written atomically after a bundle was accepted, so a restart cannot be used to roll back either.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from protected_nn.errors import BundleError

log = logging.getLogger(__name__)
FILE_NAME = "bundle.json"


class BundleRefused(BundleError):
    """Signed and well-formed, but not a bundle this gateway may run; `reason` labels the metric."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class BundlePin:
    def __init__(self, state_dir: Path | None, model_id: str | None, on_problem=log.error):
        """`on_problem`: told why the record could not be read (a line naming state_dir and the
        file; the daemon logs it, check-config prints it as a warning)."""
        self.state_dir = state_dir
        self.path = Path(state_dir) / FILE_NAME if state_dir is not None else None
        self._on_problem = on_problem
        self.configured = model_id
        self.pinned: str | None = None
        self.versions: dict[str, int] = {}
        self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text())
            self.pinned = data.get("model_id") if isinstance(data.get("model_id"), str) else None
            self.versions = {str(k): int(v) for k, v in dict(data.get("versions") or {}).items()}
        except FileNotFoundError:
            return
        except OSError as exc:
            self._problem(exc.strerror or type(exc).__name__)
        except (ValueError, TypeError, AttributeError) as exc:
            self._problem(f"not a bundle record ({exc})")

    def _problem(self, reason: str) -> None:
        # Refusing to start would stop the cameras over a damaged file; run, and say so loudly.
        self._on_problem(f"state_dir {self.state_dir}: cannot read {self.path}: {reason}: rollback "
                         "protection restarts from the bundle now on disk")

    @property
    def expected_model_id(self) -> str | None:
        return self.configured or self.pinned

    def check(self, manifest: dict) -> None:
        """BundleRefused if this (verified) manifest must not replace what runs."""
        model_id, version = manifest["model_id"], manifest["version"]
        expected = self.expected_model_id
        if expected is not None and model_id != expected:
            where = "configured model_id" if self.configured else \
                f"model this gateway runs (recorded in {self.path}; set model_id in the config to switch)"
            raise BundleRefused("model_mismatch", f"bundle is for model {model_id!r}, not {expected!r}, the {where}")
        highest = self.versions.get(model_id, 0)
        if version < highest:
            raise BundleRefused("rollback", f"bundle of model {model_id!r} has version {version}, older than "
                                            f"version {highest} this gateway already ran (rollback refused)")

    def record(self, manifest: dict) -> None:
        """After the bundle was accepted: remember its model id and version."""
        model_id = manifest["model_id"]
        self.pinned = model_id
        self.versions[model_id] = max(self.versions.get(model_id, 0), manifest["version"])
        if self.path is None:
            return
        tmp = self.path.with_name(f".{FILE_NAME}.tmp-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump({"model_id": self.pinned, "versions": self.versions}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot record the bundle version in %s: %s (a restart would accept an older one)",
                      self.path, exc)
