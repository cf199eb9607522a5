"""One backend replica in its own process, for the multi-replica tests:

    python -m tests.support.replica SPEC.json [--never-publish-alerts]

SPEC.json = {"config": <BackendConfig dict>, "rules": <AlertRules dict>}. The real Service (MQTT,
checks, pipeline, storage), with the plumbing tests' StaticCatalog and IdentityCodec (no CKKS:
these tests are about shared state). Prints "ready" once subscribed; SIGTERM stops it cleanly.
--never-publish-alerts: alerts are stored (outbox) but never reach the broker, as in a replica that
dies between its commit and the broker's acknowledgement; the test then SIGKILLs it.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading


def main(argv: list[str]) -> int:
    from backend_decryptor.config import BackendConfig
    from backend_decryptor.publish import Publisher
    from backend_decryptor.rules_config import AlertRules
    from backend_decryptor.service import Service
    from tests.support.backend import IdentityCodec, catalog

    spec = json.loads(open(argv[0]).read())
    if "--never-publish-alerts" in argv:
        Publisher.alert = lambda self, stored: None
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s replica %(levelname)s %(name)s: %(message)s")
    cfg = BackendConfig.model_validate(spec["config"])
    svc = Service(cfg, AlertRules.model_validate(spec["rules"]), catalog=catalog(), decryptor=IdentityCodec())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    svc.start(connect_timeout=30)
    print("ready", flush=True)
    while not stop.wait(0.2):
        pass
    svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
