"""A backend replica (tests/support/replica.py) that dies inside group commit, for test_batch_crash.py:

    python -m tests.support.crashing_replica before|after MIN_BATCH KEYS.json SPEC.json

On the first batch of at least MIN_BATCH results it writes the batch's (gateway, camera, sequence)
to KEYS.json and exits at once (os._exit: no cleanup, no acknowledgement, as a SIGKILL would):
`before` - inside the transaction, in the last result's decision (the batch's writes sent, not
committed); `after` - right after the commit, before anything is published or acknowledged."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace


def main(argv: list[str]) -> int:
    mode, min_batch, keys_path, spec = argv[0], int(argv[1]), argv[2], argv[3:]
    import backend_decryptor.service as service
    from tests.support import replica
    open_storage = service.open_storage

    def crashing(cfg, *a, **kw):
        db = open_storage(cfg, *a, **kw)
        inner = db.apply_batch

        def apply_batch(decisions):
            if len(decisions) < min_batch:
                return inner(decisions)
            with open(keys_path, "w") as f:
                json.dump([[d.gateway, d.camera, d.sequence] for d in decisions], f)
            if mode == "before":
                last = decisions[-1]

                def die(old):
                    last.decide(old)
                    os._exit(3)
                return inner(decisions[:-1] + [replace(last, decide=die)])
            inner(decisions)
            os._exit(3)
        db.apply_batch = apply_batch
        return db
    service.open_storage = crashing
    return replica.main(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
