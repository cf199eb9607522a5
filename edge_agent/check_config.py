"""`edge-agent check-config`: everything `run` will need, checked before it is needed.

`run` would fail on: an unreadable file (keys, certificates, password, bundle), a bundle the
gateway must refuse (signature, bundle_pin.py's model id and version), a metrics port already
taken. Those are errors (exit 2), each naming its field and path. Values that work but are
probably wrong are `warning:` lines (exit 0): no TLS to a remote broker, more frames asked for than
the workers can encrypt, workers that need more memory than the unit's MemoryMax.
"""
from __future__ import annotations

import os
import re
import resource
import time
from pathlib import Path

from edge_agent.config import ConfigError, EdgeConfig, read_password, read_signing_key
from protected_nn.artifacts import ModelArtifacts
from service_common.preflight import address_free, is_loopback, nearest_existing, not_a_folder, readable

UNIT_FILE = Path(__file__).resolve().parents[1] / "systemd" / "edge-agent.service"
DEFAULT_MEMORY_MAX = 3 << 30


def memory_max(unit: Path = UNIT_FILE) -> int:
    """The unit's MemoryMax= in bytes (3G when the unit file is not beside the code)."""
    try:
        match = re.search(r"^MemoryMax=(\d+)([KMGT]?)\s*$", unit.read_text(), re.M)
    except OSError:
        match = None
    if not match:
        return DEFAULT_MEMORY_MAX
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[match.group(2)]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_worker(artifacts) -> tuple[int, float]:
    """(bytes one worker needs, seconds per inference), measured as a worker runs: the model
    loaded from the bundle's bytes (evaluation keys and encrypted weights in SEAL's in-memory
    form, ~2x their compressed size) and one inference on a blank frame."""
    import numpy as np
    from edge_agent.pool import DEFAULT_MODEL_CLASS, _load_class
    before = _rss()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = _load_class(DEFAULT_MODEL_CLASS)(artifacts)
    loaded = _rss()
    t0 = time.perf_counter()
    model.infer(np.zeros(model.input_shape))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # ru_maxrss is the process's lifetime peak: it tells about the inference only if it rose
    grown = max(loaded, _rss(), peak if peak > peak_before else 0) - before
    # A worker gets a copy of the bytes only where they cannot be sealed (edge_agent/sealed_artifacts.py)
    copy = sum(len(v) for v in artifacts.as_members().values()) if isinstance(artifacts, ModelArtifacts) else 0
    return grown + copy, seconds


def capacity_warnings(cfg: EdgeConfig, per_worker: int, seconds: float, limit: int) -> list[str]:
    out = []
    total = cfg.workers * per_worker
    if total > limit:
        out.append(f"workers: {cfg.workers} worker(s) x {per_worker / 2**20:.0f} MiB (measured: model "
                   f"loaded from the bundle + one inference) = {total / 2**30:.2f} GiB, over the unit's "
                   f"MemoryMax={limit / 2**30:g}G: set workers: {max(1, limit // per_worker)} or raise MemoryMax")
    fps = sum(c.max_fps for c in cfg.cameras if c.enabled)
    capacity = cfg.workers / seconds if seconds > 0 else float("inf")
    if fps > 1.5 * capacity:
        out.append(f"cameras: max_fps adds up to {fps:g} frames/s, but {cfg.workers} worker(s) at "
                   f"{seconds:.2f} s per inference (measured) encrypt about {capacity:.2g}/s: the rest "
                   "is dropped (queue_full); lower max_fps or add workers/cores")
    return out


def check(cfg: EdgeConfig, measure: bool = True) -> tuple[list[str], list[str], object]:
    """(errors, warnings, model or None)."""
    errors: list[str] = []
    warnings: list[str] = []
    tls = cfg.mqtt.tls
    for field, path in [("owner_public_key", cfg.owner_public_key), ("signing_key_file", cfg.signing_key_file),
                        ("bundle", cfg.bundle), ("mqtt.password_file", cfg.mqtt.password_file),
                        ("mqtt.tls.ca_file", tls and tls.ca_file), ("mqtt.tls.cert_file", tls and tls.cert_file),
                        ("mqtt.tls.key_file", tls and tls.key_file)]:
        if (problem := readable(field, path)):
            errors.append(problem)
    in_systemd = bool(os.environ.get("CREDENTIALS_DIRECTORY"))
    secrets = [("signing_key_credential", read_signing_key, cfg.signing_key_credential),
               ("mqtt.password_credential", lambda c: read_password(c.mqtt), cfg.mqtt.password_credential)]
    for field, read, credential in secrets:
        if credential is not None and not in_systemd:
            warnings.append(f"{field} {credential!r}: checked only under systemd "
                            "($CREDENTIALS_DIRECTORY unset); `run` in the foreground needs the *_file setting")
            continue
        try:
            read(cfg)
        except ConfigError as exc:
            errors += exc.problems
    if cfg.metrics_address and (problem := address_free("metrics_address", cfg.metrics_address)):
        errors.append(problem)
    if tls is None and not is_loopback(cfg.mqtt.host):
        warnings.append(f"mqtt: no tls: section for broker {cfg.mqtt.host}: the password and results "
                        "cross the network in clear (add tls: {ca_file: ...})")
    state_usable = True
    for field, folder in [("state_dir", cfg.state_dir), ("spool.directory", cfg.spool.directory)]:
        if (problem := not_a_folder(field, folder)):              # `run` cannot make the folder
            errors.append(problem)
            if field == "state_dir":
                state_usable = False
        elif (existing := nearest_existing(folder)) is not None and not os.access(existing, os.W_OK):
            warnings.append(f"{field} {folder}: {existing} is not writable by this user (fine if `run` "
                            "runs as another user, e.g. systemd's StateDirectory)")
    model = None
    if readable("bundle", cfg.bundle) is None and readable("owner_public_key", cfg.owner_public_key) is None:
        # A state_dir that cannot be made is already an error: its bundle record is not read then.
        model = _check_bundle(cfg, errors, warnings, state_usable)
    if model is not None and measure:
        per_worker, seconds = model.measured = measure_worker(model.artifacts)
        warnings += capacity_warnings(cfg, per_worker, seconds, memory_max())
    return errors, warnings, model


def _check_bundle(cfg: EdgeConfig, errors: list[str], warnings: list[str], state_usable: bool = True):
    from edge_agent.bundle_pin import BundlePin
    from edge_agent.bundle_watch import load_bundle
    from edge_agent.preprocess import InputSpec, InputSpecError
    from protected_nn.bundle import load_owner_public_key
    from protected_nn.errors import ProtectedNNError
    try:
        owner_key = load_owner_public_key(cfg.owner_public_key)
    except ProtectedNNError as exc:      # the key's own setting, not the bundle's
        errors.append(f"owner_public_key: {exc}")
        return None
    try:
        model, manifest = load_bundle(cfg.bundle, owner_key)
        pin = BundlePin(cfg.state_dir if state_usable else None, cfg.model_id, on_problem=warnings.append)
        pin.check(manifest)                                           # what `run` applies too
        model.spec = InputSpec.from_card(model.artifacts.card())
    except (ProtectedNNError, InputSpecError, OSError) as exc:
        errors.append(f"bundle {cfg.bundle}: {exc}")     # the CLI adds the line of `bundle:`
        return None
    return model
