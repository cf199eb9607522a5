"""The locked-down broker as deployed: a real Mosquitto started with configs/mosquitto/mosquitto.conf
and configs/mosquitto/acl exactly as shipped (only the install folder and the port are rewritten),
TLS certificates from scripts/gen-broker-certs.sh, passwords hashed by mosquitto_passwd; and a TLS
MQTT 5 client of it. The tests get it as the `broker` fixture of kind "locked" (tests/conftest.py)."""
from __future__ import annotations

import os
import pwd
import queue
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import free_port

REPO = Path(__file__).resolve().parents[2]
INSTALL_DIR = "/etc/mosquitto/fhe-edge"
USERS = {"backend": "b-secret", "dashboard": "d-secret", "gw-1": "g1-secret", "gw-2": "g2-secret"}
GATEWAY_CAMERAS = {"gw-1": ["cam-1", "cam-a"], "gw-2": ["cam-9"]}   # cam-a: tests/security/test_tls_pipeline.py


class LockedBroker:
    """configs/mosquitto/* in a temporary folder, on a free loopback port."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.host = "127.0.0.1"
        subprocess.run([str(REPO / "scripts/gen-broker-certs.sh"), str(root), "gw-1"], check=True,
                       capture_output=True)
        # The shipped acl plus one block per test gateway, made by the install's own script.
        blocks = [subprocess.run([str(REPO / "scripts/broker-acl-gateway.sh"), gw, *cams], check=True,
                                 capture_output=True, text=True).stdout for gw, cams in GATEWAY_CAMERAS.items()]
        (root / "acl").write_text((REPO / "configs/mosquitto/acl").read_text() + "".join(blocks))
        passwd = root / "passwd"
        passwd.touch(mode=0o600)
        for user, password in USERS.items():
            subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
        (root / "data").mkdir()
        conf = (REPO / "configs/mosquitto/mosquitto.conf").read_text()
        assert conf.count(INSTALL_DIR) >= 5 and re.search(r"^listener 8883$", conf, re.M)
        conf = conf.replace(INSTALL_DIR, str(root))
        conf = re.sub(r"^listener 8883$", f"listener {self.port} {self.host}", conf, flags=re.M)
        conf = re.sub(r"^persistence_location .*$", f"persistence_location {root / 'data'}/", conf, flags=re.M)
        # Started as root, mosquitto would switch to user "mosquitto", who cannot read this folder.
        conf = f"user {pwd.getpwuid(os.geteuid()).pw_name}\nlog_dest file {root / 'mosquitto.log'}\n" + conf
        (root / "mosquitto.conf").write_text(conf)
        self.proc = subprocess.Popen(["mosquitto", "-c", str(root / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("locked broker did not start: " + self.log())

    def rss(self) -> int:
        """The broker's resident memory in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024

    def log(self) -> str:
        p = self.root / "mosquitto.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class Client:
    """A TLS MQTT 5 client; `connect_result` is the broker's CONNACK reason (or the error)."""

    def __init__(self, broker: LockedBroker, user: str | None, password: str | None = None,
                 ca: Path | None | str = "default", subscribe: list[str] = ()):
        self.q: queue.Queue = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                             client_id=f"{user}-{os.urandom(3).hex()}")
        self.c.tls_set(ca_certs=str(broker.root / "ca.crt") if ca == "default" else ca,
                       cert_reqs=ssl.CERT_REQUIRED)
        if user:
            self.c.username_pw_set(user, password if password is not None else USERS[user])
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        self.error: Exception | None = None
        try:
            self.c.connect(broker.host, broker.port)
        except (ssl.SSLError, OSError) as exc:
            self.error = exc
            return
        self.c.loop_start()
        try:
            self.rc = self.connack.get(timeout=10)
        except queue.Empty:
            self.rc = None
        if subscribe and self.ok:
            self.c.subscribe([(s, 1) for s in subscribe])
            self.suback = self.subacks.get(timeout=10)

    @property
    def ok(self) -> bool:
        return self.error is None and self.rc is not None and not self.rc.is_failure

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def received(self, until: bytes, timeout: float = 10) -> list[tuple[str, bytes]]:
        """Everything received up to and including the payload `until`."""
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out.append(self.q.get(timeout=0.1))
            except queue.Empty:
                continue
            if out[-1][1] == until:
                return out
        raise AssertionError(f"{until!r} never arrived; got {out}")

    def nothing_received(self, wait: float = 1.0) -> list:
        time.sleep(wait)
        out = []
        while not self.q.empty():
            out.append(self.q.get())
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
