"""What the tests of the whole chain (camera -> gateway daemon -> broker -> backend -> alerts) share:
the owner of the tiny frame model with a crowd card, in a backend store, and the alert rules that
card is judged by."""
from __future__ import annotations

import time
from pathlib import Path

from tests.support.edge_daemon import ModelOwner

MODEL = "tiny-v1"
OUTPUTS = [{"name": "crowd_count", "index": 0, "kind": "count", "scale": 100.0}]   # mean gray x 100
RULES = "crowd: {threshold: 1, consecutive: 2, hysteresis: 0.5}\nincident: {enabled: false}\n"


class ChainOwner(ModelOwner):
    """The tiny gateway model (outputs mean gray, mean motion) protected into a backend store
    (root/store, as MODEL, card OUTPUTS), bundles of the same artifacts signed with the owner key."""

    def __init__(self, root: Path):
        super().__init__(root, outputs=OUTPUTS, store_as=MODEL)


def until(predicate, timeout: float, what, poll: float = 0.1):
    """predicate()'s first true value within `timeout` s; else fail naming `what` (or what())."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out ({timeout} s) waiting for {what() if callable(what) else what}")
