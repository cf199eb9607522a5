"""From a delivered message to an acknowledged one: check -> decrypt -> decide -> store -> publish -> ack.

The network thread runs the checks (no decryption work for a message that fails them) and hands
valid messages to the decryption pool; one decision thread takes the messages in ARRIVAL order
(so a camera's consecutive-inference rules see its inferences in order, and QoS 1 acks go out in
the order MQTT requires), waits for the decryption of the first, takes those queued behind it that
are decrypted too (up to database.batch_max, waiting at most database.batch_wait for them: group
commit), applies the rules to all of them in ONE database transaction (one disk flush), publishes,
and only then acknowledges each. A crash before that commit leaves them all unacknowledged (the
broker redelivers them); after it the replay window refuses the redeliveries. A result refused
by a check, a failed decryption or decision costs only itself, never its batch. Every failure is a counted reason and one log line
(rate-limited per reason, so a flood of bad or over-limit messages cannot flood the log).
A decrypted result must be plausible (model card ranges) before the rules see it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, replace

from protected_nn.envelope import Envelope
from protected_nn.model_card import CardError
from protected_nn.runtime.result_checks import ResultRejected

from backend_decryptor import alerts
from backend_decryptor.checks import MessageChecker, Rejected
from backend_decryptor.decrypt_pool import DecryptJob
from backend_decryptor.readings import ImplausibleOutput, OutputError, check_plausible, read_outputs
from backend_decryptor.rate_limit import LogLimiter
from backend_decryptor.storage.base import Decision

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
    rules: object = None      # the camera's effective rules, once decrypted
    reading: object = None    # what the rules read from the decrypted output
    before: object = None     # the camera's rule state its decision started from


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
            self.checker.in_flight = self._is_in_flight
        self.drop_log = LogLimiter(log)
        self._queue: queue.Queue = queue.Queue()
        self._in_flight: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._last_prune = 0.0
        self._outbox: list = []
        self._carry = None   # taken from the queue, not decrypted in time for the last batch: next batch's first
        self.thread = threading.Thread(target=self._run, name="decide", daemon=True)

    def start(self) -> None:
        self._outbox = self.db.pending_alerts()   # alerts stored but never acknowledged: published once connected
        self.thread.start()

    # -- network thread -------------------------------------------------------------------------
    def _is_in_flight(self, gateway: str, camera: str, sequence: int) -> bool:
        with self._lock:
            return (gateway, camera, sequence) in self._in_flight

    def _seen(self, gateway: str, camera: str, sequence: int) -> bool:
        return self._is_in_flight(gateway, camera, sequence) or self.db.is_seen(gateway, camera, sequence)

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
        stop = False
        while not stop:
            first = self._carry
            self._carry = None
            if first is None:
                try:
                    first = self._queue.get(timeout=0.5)
                except queue.Empty:
                    self._housekeeping()
                    continue
            if first is _STOP:
                break
            if self._abandon.is_set():
                continue  # stop budget spent: left unacknowledged, the broker redelivers it
            self._resolve(first)   # waits for its decryption
            batch, stop = self._gather(first)
            try:
                outcomes = self._apply(batch)
            except Exception as exc:   # a bug: costs this batch's results, not the service
                log.exception("deciding a batch of %d results failed", len(batch))
                outcomes = {id(item): exc for item in batch}
            self._finish(batch, outcomes)
            self._housekeeping()
        self._housekeeping()

    def _gather(self, first: Item) -> tuple[list[Item], bool]:
        """`first` and the results queued behind it that are decrypted (within batch_wait), in
        arrival order, up to batch_max; the first one not ready waits for the next batch (so a
        camera's results and the acknowledgements stay in arrival order). True if _STOP came."""
        batch, bound = [first], self.cfg.database.batch_max
        deadline = time.monotonic() + self.cfg.database.batch_wait
        while len(batch) < bound:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            if item.job is not None and item.rejection is None:
                futures.wait([item.job.future], timeout=max(0.0, deadline - time.monotonic()))
                if not item.job.future.done():
                    self._carry = item
                    break
            self._resolve(item)
            batch.append(item)
        return batch, False

    def _resolve(self, item: Item) -> None:
        """Decrypted output -> readings for the rules, or item.rejection (checks, decryption,
        plausibility, model card)."""
        if item.rejection is not None:
            return
        try:
            self._read(item)
        except Exception as exc:   # a bug must cost one message, not the batch
            log.exception("reading a result on %s failed", item.topic[:120])
            item.rejection = Rejected("internal_error", str(exc))

    def _read(self, item: Item) -> None:
        env = item.envelope
        try:
            output = self.pool.result(item.job)
        except Exception as exc:  # ResultError, timeout, or a worker crash the retry did not cure
            reason = exc.reason if isinstance(exc, ResultRejected) else "decrypt_failed"
            item.rejection = Rejected(reason, f"{env.gateway_id}/{env.camera_id} "
                                              f"#{env.sequence}: {type(exc).__name__}: {exc}")
            return
        self.metrics.decrypt_seconds.observe(time.monotonic() - item.received)
        item.rules = rules = self.rules.for_camera(env.camera_id)
        try:
            card = self.catalog.card(env.model_id, env.key_fingerprint)  # the card of that key version
            check_plausible(card, output)
            item.reading = read_outputs(card, output, rules.crowd.output if rules.crowd.enabled else None,
                                        rules.incident.output if rules.incident.enabled else None)
        except ImplausibleOutput as exc:
            item.rejection = Rejected("implausible_output", f"{env.gateway_id}/{env.camera_id} "
                                                            f"#{env.sequence} model {env.model_id}: {exc}")
        except (CardError, OutputError) as exc:
            item.rejection = Rejected("bad_output", f"model {env.model_id}: {exc}")

    def _apply(self, batch: list[Item]) -> dict:
        """The batch's decidable results in ONE storage transaction -> {id(item): outcome}. If the
        transaction fails as a whole (a database error, e.g. one result's row refused), each
        result is applied on its own, so only the one at fault is lost."""
        todo = [item for item in batch if item.rejection is None]
        decisions = [self._decision(item) for item in todo]
        if not decisions:
            return {}
        try:
            outcomes = self.db.apply_batch(decisions)
        except Exception as exc:
            if len(decisions) == 1:
                outcomes = [exc]
            else:
                log.warning("a batch of %d results failed (%s: %s); applying them one at a time", len(decisions),
                            type(exc).__name__, str(exc)[:200])
                outcomes = [self._apply_alone(d) for d in decisions]
        return {id(item): out for item, out in zip(todo, outcomes)}

    def _apply_alone(self, decision: Decision):
        try:
            return self.db.apply_batch([decision])[0]
        except Exception as exc:
            return exc

    def _decision(self, item: Item) -> Decision:
        env, rules, reading = item.envelope, item.rules, item.reading
        meta = {"gateway": env.gateway_id, "model_id": env.model_id, "sequence": env.sequence}

        def decide(old: dict | None):   # pure: a retried transaction runs it again
            state = alerts.CameraState.from_dict(old)
            item.before = state
            new, events = alerts.step(rules, state, reading, env.capture_time)
            return new.to_dict(), [replace(ev, meta={**ev.meta, **meta}) for ev in events]  # keeps event_no
        return Decision(env.gateway_id, env.camera_id, env.sequence, env.capture_time, rules.zone, decide)

    def _finish(self, batch: list[Item], outcomes: dict) -> None:
        """After the commit, in arrival order: reject / publish, then acknowledge each."""
        published_now: dict[str, float] = {}   # camera -> state published by this batch
        for item in batch:
            try:
                if item.rejection is not None:
                    self._reject(item, item.rejection)
                else:
                    out = outcomes.get(id(item), RuntimeError("no outcome"))
                    if isinstance(out, Exception):
                        raise out
                    self._decided(item, out, published_now)
            except Exception as exc:
                log.error("handling a message on %s failed: %s: %s", item.topic[:120], type(exc).__name__, exc,
                          exc_info=exc)
                self._reject(item, Rejected("internal_error", str(exc)))
            finally:
                if item.envelope is not None:
                    with self._lock:
                        self._in_flight.discard((item.envelope.gateway_id, item.envelope.camera_id,
                                                 item.envelope.sequence))
                self.ack(item.mid, item.qos)
                self.metrics.in_flight.dec()

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

    def _decided(self, item: Item, result, published_now: dict[str, float]) -> None:
        env, rules = item.envelope, item.rules
        if result is None:  # another replica (or an earlier run) committed it first
            return self._reject(item, Rejected("replayed", f"{env.gateway_id}/{env.camera_id} #{env.sequence} "
                                                           "was already handled"))
        new_state, stored, published_at = result
        if env.camera_id in published_now:   # an earlier result of this batch published it
            published_at = published_now[env.camera_id]
        self.metrics.processed.inc()
        for s in stored:
            self.metrics.alerts.labels(s.event.type, s.event.event).inc()
            log.info("alert %s %s %s camera=%s level=%s", s.event.type, s.event.event, s.event.id,
                     s.event.camera, s.event.level)
            self.publisher.alert(s)
        old_public = alerts.public_state(env.camera_id, rules.zone, item.before)
        new_public = alerts.public_state(env.camera_id, rules.zone, alerts.CameraState.from_dict(new_state))
        changed = {k: v for k, v in old_public.items() if k != "time"} != \
                  {k: v for k, v in new_public.items() if k != "time"}
        interval = self.cfg.alerts.state_interval
        now = self.clock()
        stale = published_at is None or (interval > 0 and now - published_at >= interval)
        if changed or stale:
            self.publisher.state(env.camera_id, new_public, env.gateway_id)
            self.db.mark_state_published(env.camera_id, now)
            published_now[env.camera_id] = now

    def _housekeeping(self) -> None:
        if self._outbox and self.publisher.transport.connected.is_set():
            for stored in self._outbox:
                self.publisher.alert(stored)
            self._outbox = []
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
