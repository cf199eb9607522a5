"""How much does an alert reveal? The backend as a decryption oracle (docs/threat-model.md).

    .venv/bin/python bench/bench_leakage.py [--rules configs/alert-rules.yaml] [--messages 20000] [--json FILE]

A malicious gateway holds the public key and the encrypted weights, so it can build ciphertexts of
any value it can compute homomorphically from them (e.g. one weight, scaled and shifted) and send
them as inference results. The backend decrypts and feeds the value to the alert rules; what can
come back out is the alert stream (type, event, coarse label, time) - if the attacker can watch it
at all (the broker ACL denies gateways every alert and state topic; a colluding dashboard account
or the visible reaction to an alert would be needed). This runs the REAL rules engine
(backend_decryptor.alerts.step) with the shipped rules and measures:

1. passive: the entropy of what one message makes observable when the decrypted readings are
   spread over the whole range (an upper bound for an attacker who cannot choose);
2. active: an adaptive attacker who learns an unknown value v (standing for a weight) by binary
   search, one comparison "v >= c" per query, observing only the alert events; messages per bit
   for the crowd rule (raise/clear path and the label-update path) and the incident rule;
3. bits per hour at a few message rates: the gateway's configured 1 msg/s per camera, and the
   backend's measured maximum (bench_faults.py) since the backend has NO per-gateway rate limit.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend_decryptor import alerts  # noqa: E402
from backend_decryptor.readings import Reading  # noqa: E402
from backend_decryptor.rules_config import load_rules  # noqa: E402

CAMERA = "cam-x"


class Oracle:
    """The backend's decision for one camera, as seen from outside: one call = one message; the
    answer is the tuple of alert events it produced (type, event, label), ids and times dropped."""

    def __init__(self, rules, period_s: float = 1.0):
        self.rules = rules.for_camera(CAMERA)
        self.state = alerts.CameraState()
        self.t = 1_700_000_000.0
        self.period = period_s
        self.messages = 0
        ids = iter(range(10**9))
        self.new_id = lambda: f"a{next(ids)}"

    def send(self, crowd: float | None = None, incident: float | None = None) -> tuple:
        self.t += self.period
        self.messages += 1
        self.state, events = alerts.step(self.rules, self.state, Reading(crowd, None, incident), self.t, self.new_id)
        return tuple((e.type, e.event, e.level) for e in events)


def passive_entropy(rules, n: int, rng: random.Random) -> dict:
    oracle = Oracle(rules)
    hi = max(rules.crowd.threshold * 2, 1.0)
    seen = Counter(oracle.send(rng.uniform(0, hi), rng.random()) for _ in range(n))
    h = -sum(c / n * math.log2(c / n) for c in seen.values())
    events = sum(c for k, c in seen.items() if k)
    return {"messages": n, "bits_per_message": round(h, 4), "messages_with_an_event": events,
            "distinct_observations": len(seen)}


def crowd_raise_clear_attack(rules, secret: float, bits: int, lo: float, hi: float) -> dict:
    """Binary search on v in [lo, hi): query "v >= c" by sending the value v - c + threshold
    `consecutive` times; an alert raised = yes. Then a low value clears it."""
    r = rules.crowd
    oracle = Oracle(rules)
    for _ in range(bits):
        c = (lo + hi) / 2
        answer = False
        for _ in range(r.consecutive):
            if any(e[:2] == ("crowd", "raised") for e in oracle.send(secret - c + r.threshold)):
                answer = True
        if answer:
            oracle.send(r.threshold - r.hysteresis - 1.0)          # clear, ready for the next query
            lo = c
        else:
            oracle.send(r.threshold - r.hysteresis - 1.0)          # reset the streak
            hi = c
    return {"messages": oracle.messages, "bits": bits, "messages_per_bit": oracle.messages / bits,
            "error": abs((lo + hi) / 2 - secret), "interval": hi - lo}


def crowd_update_attack(rules, secret: float, bits: int, lo: float, hi: float) -> dict:
    """With an alert kept active, the label-change ("updated") event answers one comparison per
    message: park at the lowest label at/above threshold, then send v - c + (the next label's
    bound): an update to that label = yes. Needs at least two labels at or above the threshold."""
    r = rules.crowd
    above = sorted(b for b in r.levels.values() if b >= r.threshold)
    if len(above) < 2:
        return {"applicable": False, "why": "fewer than two coarse labels at or above the threshold"}
    base, probe = above[0], above[1]
    oracle = Oracle(rules)
    for _ in range(r.consecutive):
        oracle.send(base)                                          # raise once, at the base label
    for _ in range(bits):
        c = (lo + hi) / 2
        events = oracle.send(secret - c + probe)
        if any(e[1] == "updated" for e in events):
            lo = c
            oracle.send(base)                                      # back to the base label
        else:
            hi = c
    return {"applicable": True, "messages": oracle.messages, "bits": bits,
            "messages_per_bit": oracle.messages / bits, "error": abs((lo + hi) / 2 - secret)}


def incident_attack(rules, secret: float, bits: int) -> dict:
    """The incident rule has a cooldown after every raise: at most one raise per cooldown, so a
    'yes' costs a whole cooldown of waiting (the attacker keeps sending meanwhile)."""
    r = rules.incident
    oracle = Oracle(rules, period_s=1.0)
    lo, hi = 0.0, 1.0
    t0 = oracle.t
    for _ in range(bits):
        c = (lo + hi) / 2
        score = min(1.0, max(0.0, secret - c + r.probability))
        answer = False
        for _ in range(r.consecutive):
            if any(e[:2] == ("incident", "raised") for e in oracle.send(incident=score)):
                answer = True
        for _ in range(r.clear_consecutive):
            oracle.send(incident=0.0)
        while oracle.t < oracle.state.incident_cooldown_until:    # wait out the cooldown
            oracle.send(incident=0.0)
        lo, hi = (c, hi) if answer else (lo, c)
    hours = (oracle.t - t0) / 3600
    return {"messages": oracle.messages, "bits": bits, "hours_at_1_msg_per_s": round(hours, 2),
            "bits_per_hour_at_any_rate": round(bits / hours, 1) if hours else None,
            "error": abs((lo + hi) / 2 - secret)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", default=str(Path(__file__).resolve().parent.parent / "configs/alert-rules.yaml"))
    p.add_argument("--messages", type=int, default=20000, help="messages for the passive estimate")
    p.add_argument("--bits", type=int, default=24, help="bits the active attacker extracts per value")
    p.add_argument("--backend-rate", type=float, default=100.0,
                   help="messages/s the backend decrypts and decides (bench_backend.py measures it)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rules = load_rules(args.rules)
    rng = random.Random(0)
    secret = rng.uniform(-1.0, 1.0)
    out = {
        "rules": args.rules,
        "passive": passive_entropy(rules, args.messages, rng),
        "crowd_raise_clear": crowd_raise_clear_attack(rules, secret, args.bits, -2.0, 2.0),
        "crowd_update": crowd_update_attack(rules, secret, args.bits, -2.0, 2.0),
        "incident": incident_attack(rules, (secret + 1) / 2, min(args.bits, 8)),
    }
    best = min(v["messages_per_bit"] for k, v in out.items()
               if k.startswith("crowd") and v.get("applicable", True))
    out["bits_per_hour"] = {f"{rate:g} msg/s": round(3600 * rate / best)
                            for rate in (1.0, 2.0, args.backend_rate)}
    out["bits_per_hour_note"] = ("per gateway at the given message rate; the backend caps each gateway at "
                                 "limits.per_gateway_rate (default 10 msg/s, --backend-rate) and can "
                                 "restrict the camera ids it may use (checks.gateway_cameras)")
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
