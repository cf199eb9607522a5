"""Bad input at full size (not part of the test run): the figures of docs/faults.md.

    .venv/bin/python bench/bench_faults.py --messages 10000 [--valid 500] [--bundle-changes 1000] [--json FILE]

1. messages: `--messages` hostile inference messages of 37 kinds (tests/support/adversarial.py:
   random bytes, truncated and bit-flipped envelopes and ciphertexts, ciphertexts under another key,
   unknown model, oversized, replayed sequence, wrong version, huge declared lengths, ...; and
   issue 15's, tests/support/forged_messages.py: transparent ciphertexts built from the plan alone,
   scale +inf or wrong, all-zero coefficients, degenerate c1, wrong level, not NTT, unsigned,
   forged signatures, another gateway's key, unknown gateway, re-labelled replays, spliced
   payloads, another gateway's camera, sequence >= 2^63) with `--valid` valid signed encrypted
   results spread among them, published to a real Mosquitto and handled by `backend-decryptor run`
   (a subprocess with a real protected model). Reported: crashes (process exits), false alerts
   (the valid stream is a quiet scene and every forgery carries alarm values: any alert is false),
   hostile messages accepted (processed beyond the valid ones), valid results processed,
   rejections by reason, messages per second.
2. bundles: `--bundle-changes` random single-byte changes (position and new value uniform over the
   whole file) to a real signed bundle, each checked by `read_bundle` with the owner key (what the
   gateway's reload path runs): how many were refused, how many raised something other than
   BundleError. tests/security/test_bundles.py does 100 of them through the running daemon.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.mosquitto import Mosquitto  # noqa: E402
from tests.support.adversarial import (  # noqa: E402
    AdversarialCorpus, protected_store, publisher, run_campaign, verdict)
from tests.support.backend_process import BROKER_QUEUE, BackendProcess  # noqa: E402


def machine() -> str:
    import os
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"


def bench_messages(work: Path, n_bad: int, n_valid: int, seed: int) -> dict:
    fp, payload, other_payload, other_fp, _, plan = protected_store(work)
    with Mosquitto(extra_config=BROKER_QUEUE) as broker:
        # One gateway sends the whole campaign: the per-gateway rate limit would (rightly) drop
        # most of it as rate_limited; here every message must be judged on its content.
        backend = BackendProcess(work, broker, limits={"per_gateway_rate": None}).start()
        client = publisher(broker)
        try:
            t0 = time.perf_counter()
            sent = run_campaign(AdversarialCorpus(fp, payload, other_payload, other_fp, plan, seed=seed), client,
                                n_bad, n_valid)
            backend.wait_handled(len(sent), timeout=max(600, len(sent) / 5))
            elapsed = time.perf_counter() - t0
            v = verdict(backend, sent)
            v["seconds"] = round(elapsed, 1)
            v["messages_per_s"] = round(len(sent) / elapsed, 1)
            v["internal_errors"] = v["rejected"].get("internal_error", 0)
            v["stop_s"] = round(backend.terminate(), 2)
            v["exit_code"] = backend.proc.returncode
            v["crashes"] = 0 if v["alive"] and v["exit_code"] == 0 else 1
            v["hostile_accepted"] = max(0, int(v["processed"]) - v["valid"])
            return v
        finally:
            client.disconnect()
            client.loop_stop()
            backend.kill()


def bench_bundles(work: Path, n: int, seed: int) -> dict:
    from protected_nn import api, bundle
    from protected_nn.errors import BundleError
    from tests.support.tiny_models import crowd_model
    crowd_model(work / "b.onnx")
    key = bundle.generate_owner_key()
    prot = api.protect(work / "b.onnx")
    data = bundle.build_bundle("tiny-v1", prot.artifacts, key)
    rng = random.Random(seed)
    refused = accepted = other = 0
    others: list[str] = []
    t0 = time.perf_counter()
    for _ in range(n):
        b = bytearray(data)
        pos = rng.randrange(len(b))
        b[pos] = (b[pos] + rng.randrange(1, 256)) % 256          # a real change, never the same byte
        try:
            bundle.read_bundle(bytes(b), key.public_key())
            accepted += 1
        except BundleError:
            refused += 1
        except Exception as exc:                                   # a contract breach: count and show
            other += 1
            others.append(f"{type(exc).__name__}: {exc}"[:200])
    return {"changes": n, "bundle_bytes": len(data), "refused": refused, "accepted": accepted,
            "other_exceptions": other, "examples": others[:5],
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10000, help="hostile messages (default 10000)")
    p.add_argument("--valid", type=int, default=None, help="valid results among them (default messages/20)")
    p.add_argument("--bundle-changes", type=int, default=1000, help="random single-byte bundle changes")
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    n_valid = args.valid if args.valid is not None else max(1, args.messages // 20)
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    try:
        out = {"machine": machine()}
        if args.bundle_changes:
            out["bundles"] = b = bench_bundles(work, args.bundle_changes, args.seed)
            print(f"bundles: {b['changes']} single-byte changes to a {b['bundle_bytes']}-byte bundle: "
                  f"{b['refused']} refused, {b['accepted']} accepted, {b['other_exceptions']} other exceptions "
                  f"({b['seconds']} s)", flush=True)
        if args.messages:
            out["messages"] = m = bench_messages(work, args.messages, n_valid, args.seed)
            print(f"messages: {m['bad']} hostile + {m['valid']} valid in {m['seconds']} s "
                  f"({m['messages_per_s']}/s): crashes {m['crashes']}, false alerts {m['alerts']}, "
                  f"hostile accepted {m['hostile_accepted']}/{m['bad']}, "
                  f"valid processed {m['valid_processed']}/{m['valid']}, processed total {m['processed']:.0f}, "
                  f"rejected {sum(m['rejected'].values()):.0f}, internal errors {m['internal_errors']:.0f}, "
                  f"SIGTERM stop {m['stop_s']} s (exit {m['exit_code']})")
            print("rejections by reason: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(m["rejected"].items())))
        print(out["machine"])
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        ok = (not args.messages or (out["messages"]["crashes"] == 0 and out["messages"]["alerts"] == 0
                                    and out["messages"]["hostile_accepted"] == 0
                                    and out["messages"]["valid_processed"] == out["messages"]["valid"])) and \
             (not args.bundle_changes or out["bundles"]["refused"] == args.bundle_changes)
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
