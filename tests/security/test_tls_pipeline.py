"""Both services on the locked-down broker exactly as deployed: TLS (certificates from
scripts/gen-broker-certs.sh, host name checked), a user and a password file each, the shipped ACL
(configs/mosquitto/). A real RTSP camera -> gateway daemon `gw-1` -> encrypted results ->
`backend-decryptor run` as user `backend` -> alert and state read by user `dashboard`.
The other broker tests check what is refused; this one checks that the real services work with
it, and that a gateway with a wrong password gets nothing through and keeps running."""
from __future__ import annotations

import json
import time

import pytest

from tests.support.backend_process import BackendProcess
from tests.support.edge_daemon import Daemon
from tests.support.locked_broker import USERS, Client, LockedBroker
from tests.support.pipeline import RULES, ChainOwner, until
from tests.support.rtsp_camera import RtspCamera, gstreamer_available

pytestmark = [pytest.mark.skipif(not gstreamer_available(), reason="GStreamer RTSP server not installed"),
              pytest.mark.broker("locked")]


def _mqtt(broker: LockedBroker, user: str, password: str, folder) -> dict:
    secret = folder / f"{user}.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    return {"host": broker.host, "port": broker.port, "tls": {"ca_file": str(broker.root / "ca.crt")},
            "username": user, "password_file": str(secret)}


def test_gateway_and_backend_over_tls_with_credentials_and_acl(tmp_path, broker):
    owner = ChainOwner(tmp_path)
    dashboard = Client(broker, "dashboard", subscribe=["fhe-edge/alerts/#", "fhe-edge/state/#"])
    assert dashboard.ok, dashboard.rc
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "store").symlink_to(owner.store)
    backend = BackendProcess(tmp_path / "backend", broker, client_id="backend-tls", rules=RULES,
                             allowed_gateways=["gw-1"],
                             mqtt=_mqtt(broker, "backend", USERS["backend"], tmp_path)).start()
    (tmp_path / "gw").mkdir()
    with RtspCamera(fps=10) as camera:
        d = Daemon(tmp_path / "gw", owner, broker, {"cam-a": camera.url}, gateway_id="gw-1",
                   mqtt=_mqtt(broker, "gw-1", USERS["gw-1"], tmp_path))
        try:
            d.wait_ready()
            # results went gateway -> broker -> backend over TLS, and were decrypted there
            until(lambda: backend.handled()[1] >= 3, 90, lambda: f"results at the backend: {backend.log()}")
            assert not backend.rejected(), backend.rejected()
            # the backend's alert and state reach the dashboard (read-only user) over TLS
            got = {}
            until(lambda: _drain(dashboard, got) and "fhe-edge/alerts/cam-a" in got
                  and "fhe-edge/state/cam-a" in got, 30, lambda: f"alert and state at the dashboard: {got}")
            alert = json.loads(got["fhe-edge/alerts/cam-a"])
            assert alert["type"] == "crowd" and alert["event"] == "raised", alert
            assert not any(t.startswith("fhe-edge/infer/") for t in got)
        finally:
            d.close()
    # a gateway with a wrong password: refused, nothing it produces gets through, it keeps running
    before = _settled(backend)           # the good gateway's last results may still be arriving
    with RtspCamera(fps=10) as camera:
        (tmp_path / "gw-bad").mkdir()
        bad = Daemon(tmp_path / "gw-bad", owner, broker, {"cam-a": camera.url}, gateway_id="gw-1",
                     mqtt=_mqtt(broker, "gw-1", "wrong-password", tmp_path / "gw-bad"))
        try:
            bad.wait_ready()
            until(lambda: "refused the connection" in bad.output(), 30, lambda: bad.output())
            until(lambda: bad.metric('edge_agent_results_total{camera="cam-a"}') >= 3, 90,
                  lambda: f"results produced by the refused gateway: {bad.output()}")
            assert bad.proc.poll() is None
            assert backend.handled()[0] == before, "a message reached the backend from the refused gateway"
        finally:
            bad.close()
            backend.terminate()
            dashboard.c.loop_stop()


def _settled(backend: BackendProcess, quiet: float = 3.0) -> float:
    """Messages the backend has received, once that count has not changed for `quiet` seconds."""
    count, since = backend.handled()[0], time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.2)
        now = backend.handled()[0]
        if now != count:
            count, since = now, time.monotonic()
    return count


def _drain(client: Client, into: dict) -> bool:
    while not client.q.empty():
        topic, payload = client.q.get_nowait()
        into[topic] = payload
    return True
