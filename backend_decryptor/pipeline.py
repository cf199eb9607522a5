"""From a delivered message to an acknowledged one: check -> decrypt -> decide -> store -> publish -> ack.

The network thread runs the checks (no decryption work for a message that fails them) and hands
valid messages to the decryption pool; one decision thread takes the messages in ARRIVAL order
(so a camera's consecutive-inference rules see its inferences in order, and QoS 1 acks go out in
the order MQTT requires), waits for each decryption, applies the rules in one database transaction,
publishes, and only then acknowledges. Every failure is a counted reason and one log line
(rate-limited per reason, so a flood of bad or over-limit messages cannot flood the log).
A decrypted result must be plausible (model card ranges) before the rules see it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, replace

from protected_nn.envelope import Envelope
from protected_nn.model_card import CardError
from protected_nn.runtime.result_checks import ResultRejected

from backend_decryptor import alerts
from backend_decryptor.checks import MessageChecker, Rejected
from backend_decryptor.decrypt_pool import DecryptJob
from backend_decryptor.readings import ImplausibleOutput, OutputError, check_plausible, read_outputs
from backend_decryptor.rate_limit import LogLimiter

log = logging.getLogger(__name__)
_STOP = object()


@dataclass
class Item:
    topic: str
    mid: int
    qos: int
    received: float
    envelope: Envelope | None = None
    job: DecryptJob | None = None
    rejection: Rejected | None = None


class Pipeline:
    def __init__(self, cfg, rules, catalog, pool, db, metrics, publisher, ack, clock=time.time):
        self.cfg, self.rules, self.catalog, self.pool = cfg, rules, catalog, pool
        self.db, self.metrics, self.publisher, self.ack = db, metrics, publisher, ack
        self.clock = clock
        self.checker = MessageChecker(cfg.checks, cfg.mqtt.topic_prefix, catalog, self._seen, clock, cfg.limits,
                                      bind=db.bind_camera)
        if self.checker.limiter is not None:  # the storage's bucket: shared by all replicas on PostgreSQL
            lim = self.checker.limiter
            self.checker.limiter = db.rate_limiter(lim.rate, int(lim.burst), cfg.checks.max_clock_skew)
        self.drop_log = LogLimiter(log)
        self._queue: queue.Queue = queue.Queue()
        self._in_flight: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._last_prune = 0.0
        self.thread = threading.Thread(target=self._run, name="decide", daemon=True)

    def start(self) -> None:
        for stored in self.db.pending_alerts():  # outbox: alerts stored but never acknowledged
            self.publisher.alert(stored)
        self.thread.start()

    # -- network thread -------------------------------------------------------------------------
    def _seen(self, gateway: str, camera: str, sequence: int) -> bool:
        with self._lock:
            if (gateway, camera, sequence) in self._in_flight:
                return True
        return self.db.is_seen(gateway, camera, sequence)

    def on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        if self._stopping.is_set():
            return  # left unacknowledged: the broker redelivers it to this session after the restart
        self.metrics.received.inc()
        self.metrics.in_flight.inc()
        item = Item(topic, mid, qos, time.monotonic())
        try:
            env = self.checker.check(topic, payload)
            key = (env.gateway_id, env.camera_id, env.sequence)
            with self._lock:
                if key in self._in_flight:
                    raise Rejected("replayed", f"{key[0]}/{key[1]} #{key[2]} is already being handled")
                self._in_flight.add(key)
            item.envelope = env
            item.job = self.pool.submit(env.model_id, env.key_fingerprint, env.payload)
        except Rejected as exc:
            item.rejection = exc
        except Exception as exc:  # a bug must cost one message, not the service
            log.exception("checking a message on %s failed", topic[:120])
            item.rejection = Rejected("internal_error", str(exc))
        self._queue.put(item)

    # -- decision thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._housekeeping()
                continue
            if item is _STOP:
                self._housekeeping()
                return
            if self._abandon.is_set():
                continue  # stop budget spent: left unacknowledged, the broker redelivers it
            try:
                self._handle(item)
            except Exception as exc:
                log.exception("handling a message on %s failed", item.topic[:120])
                self._reject(item, Rejected("internal_error", str(exc)))
            finally:
                if item.envelope is not None:
                    with self._lock:
                        self._in_flight.discard((item.envelope.gateway_id, item.envelope.camera_id,
                                                 item.envelope.sequence))
                self.ack(item.mid, item.qos)
                self.metrics.in_flight.dec()
            self._housekeeping()

    def _reject(self, item: Item, exc: Rejected) -> None:
        self.metrics.rejected.labels(exc.reason).inc()
        try:
            self.db.count_rejection(exc.reason)
        except Exception:
            log.exception("could not count a rejection in the history")
        self.drop_log.warning(exc.reason, "dropped message on %s: %s: %s", item.topic[:120], exc.reason, exc)
        if item.envelope is not None:  # it passed the checks: show the drop in the camera's state (drops.py)
            env = item.envelope
            try:
                self.publisher.dropped(env.camera_id, exc.reason, lambda: self._public_state(env.camera_id),
                                       env.gateway_id)
            except Exception:
                log.exception("could not publish the drop in the state of camera %s", env.camera_id)

    def _public_state(self, camera: str) -> dict:
        zone, state = self.db.camera_state(camera) or (self.rules.for_camera(camera).zone, None)
        return alerts.public_state(camera, zone, alerts.CameraState.from_dict(state))

    def _handle(self, item: Item) -> None:
        if item.rejection is not None:
            return self._reject(item, item.rejection)
        env = item.envelope
        try:
            output = self.pool.result(item.job)
        except Exception as exc:  # ResultError, timeout, or a worker crash the retry did not cure
            reason = exc.reason if isinstance(exc, ResultRejected) else "decrypt_failed"
            return self._reject(item, Rejected(reason, f"{env.gateway_id}/{env.camera_id} "
                                                       f"#{env.sequence}: {type(exc).__name__}: {exc}"))
        self.metrics.decrypt_seconds.observe(time.monotonic() - item.received)
        rules = self.rules.for_camera(env.camera_id)
        try:
            card = self.catalog.card(env.model_id, env.key_fingerprint)  # the card of that key version
            check_plausible(card, output)
            reading = read_outputs(card, output, rules.crowd.output if rules.crowd.enabled else None,
                                   rules.incident.output if rules.incident.enabled else None)
        except ImplausibleOutput as exc:
            return self._reject(item, Rejected("implausible_output", f"{env.gateway_id}/{env.camera_id} "
                                                                     f"#{env.sequence} model {env.model_id}: {exc}"))
        except (CardError, OutputError) as exc:
            return self._reject(item, Rejected("bad_output", f"model {env.model_id}: {exc}"))
        self._decide(item, env, rules, reading)

    def _decide(self, item: Item, env: Envelope, rules, reading) -> None:
        meta = {"gateway": env.gateway_id, "model_id": env.model_id, "sequence": env.sequence}
        before: list = []

        def decide(old: dict | None):
            state = alerts.CameraState.from_dict(old)
            before.append(state)
            new, events = alerts.step(rules, state, reading, env.capture_time)
            return new.to_dict(), [replace(ev, meta={**ev.meta, **meta}) for ev in events]  # keeps event_no

        result = self.db.apply(env.gateway_id, env.camera_id, env.sequence, env.capture_time, rules.zone, decide)
        if result is None:  # another replica (or an earlier run) committed it first
            return self._reject(item, Rejected("replayed", f"{env.gateway_id}/{env.camera_id} #{env.sequence} "
                                                           "was already handled"))
        new_state, stored, published_at = result
        self.metrics.processed.inc()
        for s in stored:
            self.metrics.alerts.labels(s.event.type, s.event.event).inc()
            log.info("alert %s %s %s camera=%s level=%s", s.event.type, s.event.event, s.event.id,
                     s.event.camera, s.event.level)
            self.publisher.alert(s)
        old_public = alerts.public_state(env.camera_id, rules.zone, before[0])
        new_public = alerts.public_state(env.camera_id, rules.zone, alerts.CameraState.from_dict(new_state))
        changed = {k: v for k, v in old_public.items() if k != "time"} != \
                  {k: v for k, v in new_public.items() if k != "time"}
        interval = self.cfg.alerts.state_interval
        now = self.clock()
        stale = published_at is None or (interval > 0 and now - published_at >= interval)
        if changed or stale:
            self.publisher.state(env.camera_id, new_public, env.gateway_id)
            self.db.mark_state_published(env.camera_id, now)

    def _housekeeping(self) -> None:
        self.db.mark_published(self.publisher.poll())
        for stored in self.db.take_over_alerts():  # other replicas' alerts whose outbox lease ran out
            self.publisher.alert(stored)
        self.drop_log.flush()
        now = self.clock()
        if now - self._last_prune > 60:
            self._last_prune = now
            self.db.prune_seen(now - 2 * self.cfg.checks.max_clock_skew)
            if self.cfg.database.retention:  # a batch at a time (storage/base.py prune_in_batches)
                self.db.prune_history(now - self.cfg.database.retention)

    def stop(self, timeout: float) -> bool:
        """Stop taking messages and finish (and acknowledge) the ones already taken, for up to
        `timeout` s; after that, finish only the message at hand and leave the rest unacknowledged
        (the broker redelivers them to this session). True if everything taken was handled."""
        self._stopping.set()
        self._queue.put(_STOP)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            return True
        self._abandon.set()
        self.thread.join(self.pool.timeout)
        return False
