"""A decryption worker does not outlive its service: SIGKILL of the service (no cleanup runs)
ends the pool's worker processes too, instead of leaving orphans that hold the owner's keys."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SERVICE = """
import os, sys
from backend_decryptor.decrypt_pool import DecryptPool
from tests.support.backend import IdentityCodec
if __name__ == "__main__":
    pool = DecryptPool(IdentityCodec(), workers=2)
    pool.warm_up()
    kids = [int(p) for p in os.listdir("/proc") if p.isdigit()
            and open(f"/proc/{p}/stat").read().split(") ")[1].split()[1] == str(os.getpid())]
    print(" ".join(map(str, kids)), flush=True)
    sys.stdin.read()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_end_when_the_service_is_killed():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SERVICE], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) >= 2, workers          # the two workers (and perhaps a resource tracker)
        assert all(_alive(p) for p in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "worker processes outlived the killed service"
    finally:
        proc.kill()
