"""Wiring of the backend service and its life cycle (start, ready, watchdog, clean stop).

SIGTERM/SIGINT: stop taking messages, finish and acknowledge every message already taken, say
"offline", disconnect - within 10 s (systemd's TimeoutStopSec leaves margin). A message the broker
delivered but that we did not get to is simply not acknowledged: the broker redelivers it to this
client id's session on the next start, so nothing in flight is lost.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

from backend_decryptor.catalog import StoreCatalog
from backend_decryptor.config import BackendConfig
from backend_decryptor.decrypt_pool import DecryptPool, StoreDecryptor
from backend_decryptor.metrics import Metrics
from backend_decryptor.pipeline import Pipeline
from backend_decryptor.publish import Publisher
from backend_decryptor.receiver import Receiver, mqtt_link
from backend_decryptor.rules_config import AlertRules
from backend_decryptor.storage import Storage, open_storage
from backend_decryptor.storage.active_keys import record_and_check
from service_common.notify import sd_notify, watchdog_interval

log = logging.getLogger(__name__)
STOP_BUDGET = 10.0


class Service:
    def __init__(self, cfg: BackendConfig, rules: AlertRules, *, catalog=None, decryptor=None, transport=None,
                 clock=time.time):
        """`catalog` and `decryptor` default to the protected model store (cfg.store), `transport`
        to the broker of cfg.mqtt (receiver.mqtt_link); tests and the benchmark may inject others
        (service_common.transport.MemoryTransport runs the service without a broker)."""
        self.cfg = cfg
        self.rules = rules
        self._own_store = catalog is None  # injected catalogs (tests, benchmark) have no store to check
        self.catalog = catalog if catalog is not None else StoreCatalog(cfg.store)
        self.decryptor = decryptor if decryptor is not None else StoreDecryptor(cfg.store)
        self.clock = clock
        self.metrics = Metrics()
        self.db: Storage | None = None
        self.pool: DecryptPool | None = None
        self._given_transport = transport
        self.transport = None
        self.receiver: Receiver | None = None
        self.pipeline: Pipeline | None = None
        self._stop_requested = threading.Event()

    def start(self, connect_timeout: float | None = 10.0) -> "Service":
        self.db = open_storage(self.cfg)
        if self._own_store:  # refuse to start without a key another replica made active
            from backend_decryptor.store import Store
            try:
                record_and_check(self.db, Store(self.cfg.store, create=False))
            except BaseException:
                self.db.close()
                raise
        self.pool = DecryptPool(self.decryptor, self.cfg.decrypt.workers, self.cfg.decrypt.timeout)
        self.pool.warm_up()
        # One transport, owned here: the publisher sends through it, the pipeline acknowledges
        # through it, the receiver subscribes on it.
        given = self._given_transport
        self.transport = given if given is not None else mqtt_link(self.cfg.mqtt)
        publisher = Publisher(self.transport, self.cfg.mqtt.topic_prefix, self.cfg.alerts.home_assistant,
                              state_interval=self.cfg.alerts.state_interval)
        self.pipeline = Pipeline(self.cfg, self.rules, self.catalog, self.pool, self.db, self.metrics,
                                 publisher, self.transport.ack, self.clock)
        self.receiver = Receiver(self.transport, self.cfg.mqtt, on_message=self.pipeline.on_message,
                                 on_peers=self.metrics.set_peers)
        self.pipeline.start()
        if self.cfg.metrics.listen:
            self.metrics.serve(self.cfg.metrics.listen)
        self.transport.start()
        if connect_timeout is not None and not self.receiver.wait_connected(connect_timeout):
            log.warning("not connected to %s:%s yet; retrying in the background",
                        self.cfg.mqtt.host, self.cfg.mqtt.port)
        return self

    def stop(self, timeout: float = STOP_BUDGET) -> bool:
        """Clean stop; True if every taken message was handled and acknowledged in time."""
        deadline = time.monotonic() + timeout
        drained = True
        if self.pipeline is not None:
            drained = self.pipeline.stop(max(0.5, deadline - time.monotonic() - 3.0))
            if not drained:
                log.warning("stop: stop budget spent; messages not handled yet stay unacknowledged "
                            "and are redelivered to this client id after the restart")
        if self.transport is not None:
            self.transport.stop(timeout=max(0.2, min(2.0, deadline - time.monotonic())))
        if self.pool is not None:
            self.pool.close()
        if self.db is not None:
            self.db.close()
        return drained

    def request_stop(self, *_args) -> None:
        self._stop_requested.set()

    def run_forever(self) -> int:
        """The `run` command: signals, sd_notify READY/WATCHDOG/STOPPING, clean stop."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start(connect_timeout=None)
        sd_notify("READY=1\nSTATUS=receiving")
        log.info("backend-decryptor %s running: subscribed to %s", self.cfg.mqtt.client_id,
                 self.receiver.subscription)
        ping = watchdog_interval()
        next_ping = time.monotonic()
        # Short waits: a signal the kernel hands to another thread runs its Python handler only
        # when the main thread wakes up, so an untimed (or hour-long) wait would ignore SIGTERM.
        while not self._stop_requested.wait(0.2):
            if ping and time.monotonic() >= next_ping and self.pipeline.thread.is_alive():
                sd_notify("WATCHDOG=1")
                next_ping = time.monotonic() + ping
        sd_notify("STOPPING=1")
        log.info("stopping")
        return 0 if self.stop() else 1
