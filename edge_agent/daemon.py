"""The gateway daemon: wires capture -> preprocess -> worker pool -> envelope -> publisher, plus
health, bundle reloads and signals.

SIGTERM/SIGINT: capture stops, queued frames are dropped (counted), frames already inside a
worker are finished and published (or spooled), the gateway says `offline`, exit - all within
SHUTDOWN_BUDGET_S (systemd's TimeoutStopSec is larger). SIGHUP: check the bundle file now.
"""
from __future__ import annotations

import faulthandler
import logging
import signal
import threading
import time

from protected_nn.envelope import Envelope, encode
from protected_nn.result_auth import SealerCache
from protected_nn.errors import ProtectedNNError

from edge_agent.bundle_watch import BundleWatcher
from edge_agent.capture import ONLINE, CameraCapture
from edge_agent.config import ConfigError, EdgeConfig, read_password, read_signing_key
from edge_agent.health import HealthReporter, sd_notify
from edge_agent.metrics import Metrics
from edge_agent.pool import InferenceJob, Model, WorkerPool
from edge_agent.preprocess import InputSpec, InputSpecError, Preprocessor
from edge_agent.publisher import Publisher
from edge_agent.sequences import SequenceStore
from edge_agent.spool import Spool

log = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 8.0     # < 10 s promised to operators; pool 5 s, publisher the rest
READY_WAIT_S = 120.0        # loading a large model in the workers can take a while


class Daemon:
    def __init__(self, cfg: EdgeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.stop_requested = threading.Event()
        self.started = time.time()
        self._spec_lock = threading.Lock()
        self._generation = 0
        self._preprocessors: dict[str, Preprocessor] = {}
        self.cameras = [c for c in cfg.cameras if c.enabled]
        self.model: Model | None = None

    # -- model and input spec ---------------------------------------------------------------------
    def _input_spec(self, model: Model) -> InputSpec:
        return InputSpec.from_card(model.artifacts.card())

    def _install_spec(self, spec: InputSpec, generation: int) -> None:
        with self._spec_lock:
            self._generation = generation
            self._preprocessors = {c.id: Preprocessor(spec) for c in self.cameras}
        for capture in getattr(self, "captures", []):
            capture.reference_gap_s = spec.motion_interval_s

    def _on_new_model(self, model: Model) -> bool:
        try:
            spec = self._input_spec(model)
        except InputSpecError as exc:
            log.error("new bundle REFUSED, the running model stays: %s", exc)
            self.metrics.bundle_loads.labels(result="refused").inc()
            self.metrics.bundle_refused.labels(reason="input_spec").inc()
            return False
        self.pool.swap_model(model)            # assigns model.generation
        self._install_spec(spec, model.generation)
        self.model = model
        return True

    # -- pipeline callbacks -----------------------------------------------------------------------
    def _on_frame(self, camera_id: str, frame, capture_time: float, reference) -> None:
        self.metrics.frames_sampled.labels(camera=camera_id).inc()
        t0 = time.perf_counter()
        with self._spec_lock:
            pre, generation = self._preprocessors[camera_id], self._generation
        x = pre(frame, reference)
        self.metrics.stage_seconds.labels(stage="preprocess").observe(time.perf_counter() - t0)
        self.pool.submit(InferenceJob(camera_id=camera_id, tensor=x, capture_time=capture_time,
                                      generation=generation))

    def _on_read(self, camera_id: str) -> None:
        self.metrics.frames_captured.labels(camera=camera_id).inc()

    def _on_status(self, camera_id: str, status: str) -> None:
        self.metrics.camera_online.labels(camera=camera_id).set(1 if status == ONLINE else 0)
        self.publisher.set_camera_status(camera_id, status)

    def _on_result(self, job: InferenceJob, payload: bytes, model: Model) -> None:
        try:
            data = encode(Envelope(model_id=model.model_id, key_fingerprint=model.key_fingerprint,
                                   gateway_id=self.cfg.gateway_id, camera_id=job.camera_id,
                                   sequence=self.sequences.next(job.camera_id),
                                   capture_time=job.capture_time, payload=payload),
                          self.signers.signer(model.key_fingerprint, model.result_key))
        except ProtectedNNError as exc:
            log.error("cannot wrap the result of camera %s: %s", job.camera_id, exc)
            self.metrics.frames_dropped.labels(camera=job.camera_id, reason="envelope").inc()
            return
        self.metrics.results.labels(camera=job.camera_id).inc()
        self.publisher.submit_result(job.camera_id, data, job.capture_time)

    # -- health -----------------------------------------------------------------------------------
    def stats(self) -> dict:
        m = self.metrics
        online = sum(1 for c in self.captures if c.status == ONLINE)
        return {
            "gateway_id": self.cfg.gateway_id, "model_id": self.model.model_id if self.model else None,
            "model_version": self.watcher.version,
            "uptime_s": round(time.time() - self.started, 1),
            "fps": round(self.health.fps(m.total(m.results)), 3),
            "queue_depth": self.pool.depth, "workers_ready": self.pool.ready_workers,
            "worker_restarts": self.pool.restarts,
            "frames_captured": m.total(m.frames_captured), "frames_sampled": m.total(m.frames_sampled),
            "frames_dropped": m.total(m.frames_dropped), "results": m.total(m.results),
            "results_acked": self.publisher.acked, "publish_failures": m.total(m.publish_failures),
            "spool_messages": len(self.spool), "spool_bytes": self.spool.size_bytes,
            "spool_evictions": self.spool.evicted,
            "cameras": len(self.captures), "cameras_online": online,
            "mqtt_connected": self.publisher.connected.is_set(),
        }

    def _alive(self) -> bool:
        return self.pool.alive() and self.publisher.alive()

    # -- lifecycle --------------------------------------------------------------------------------
    def _install_signals(self) -> None:
        def stop(signum, frame):
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self.stop_requested.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda s, f: self.watcher.request_check())
        faulthandler.register(signal.SIGUSR1, all_threads=True)   # `kill -USR1`: thread dump to the log

    def run(self) -> int:
        cfg = self.cfg
        try:
            self.signing_key = read_signing_key(cfg)   # every result is signed: no key, no start
            self.signers = SealerCache(self.signing_key, cfg.gateway_id)
            password = read_password(cfg.mqtt)         # before the metrics port is opened
        except ConfigError as exc:
            log.error("cannot start: %s", exc)
            return 2
        self.watcher = BundleWatcher(cfg.bundle, cfg.owner_public_key, cfg.bundle_poll_s,
                                     self._on_new_model, self.metrics, cfg.state_dir, cfg.model_id)
        try:
            self.model = self.watcher.load_initial()
            spec = self._input_spec(self.model)
        except (ProtectedNNError, InputSpecError, OSError) as exc:
            log.error("cannot start: bundle %s: %s", cfg.bundle, exc)
            return 2
        self._install_spec(spec, self.model.generation)
        if cfg.metrics_address:
            self.metrics.serve(cfg.metrics_address)
        self.sequences = SequenceStore(cfg.state_dir)
        self.spool = Spool(cfg.spool.directory, cfg.spool.max_bytes)
        self.publisher = Publisher(cfg.mqtt, cfg.gateway_id, self.spool, self.metrics,
                                   password).start()
        self.pool = WorkerPool(self.model, cfg.workers, cfg.queue_size, self._on_result,
                               self.metrics).start()
        self.captures = [CameraCapture(c, cfg.capture, self._on_frame, self._on_status, self._on_read)
                         for c in self.cameras]
        for capture in self.captures:
            capture.reference_gap_s = spec.motion_interval_s
        self._install_signals()
        self.health = HealthReporter(self.metrics, self.stats, self._alive,
                                     self.publisher.publish_stats, cfg.stats_interval_s)
        log.info("gateway %s: model %s (key %s), %d camera(s), %d worker(s), input %s",
                 cfg.gateway_id, self.model.model_id, self.model.key_fingerprint,
                 len(self.captures), cfg.workers, spec.shape)
        deadline = time.monotonic() + READY_WAIT_S
        while (self.pool.ready_workers == 0 and time.monotonic() < deadline
               and not self.stop_requested.wait(0.1)):
            pass
        for c in self.captures:
            c.start()
        self.watcher.start()
        self.health.start()
        sd_notify("READY=1")
        log.info("ready (%d worker(s) loaded)", self.pool.ready_workers)
        # Wait in short slices: Python runs signal handlers only in the main thread, and when the
        # kernel delivers SIGHUP/SIGTERM to another thread, a main thread blocked in an untimed
        # wait never gets to run them (seen: SIGHUP reloads lost until the next signal).
        while not self.stop_requested.wait(0.2):
            pass
        return self.shutdown()

    def shutdown(self) -> int:
        t0 = time.monotonic()
        sd_notify("STOPPING=1")
        for c in self.captures:
            c.request_stop()                    # all cameras at once, then a short join each
        for c in self.captures:
            c.stop(timeout=0.2)
        self.watcher.stop()
        log.info("shutdown: capture stopped (%.1f s); finishing frames inside workers", time.monotonic() - t0)
        self.pool.stop(timeout=5.0)
        log.info("shutdown: workers stopped (%.1f s); flushing results", time.monotonic() - t0)
        self.publisher.close(timeout=max(0.5, SHUTDOWN_BUDGET_S - (time.monotonic() - t0)))
        self.sequences.close()
        self.health.stop()
        log.info("stopped in %.1f s (%d result(s) left in the spool)", time.monotonic() - t0, len(self.spool))
        return 0
