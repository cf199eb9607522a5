"""Fixtures shared by the test files. Helpers shared by several test files live in tests/support/;
no test module imports another (tests/test_layout.py checks)."""
from __future__ import annotations

import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.postgres import postgres_server  # noqa: F401 (session-scoped: one server per run)

BROKER_KINDS = ("plain", "persistent", "tls", "locked")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "broker(kind): the kind of broker the `broker` fixture starts, one of "
        + ", ".join(BROKER_KINDS) + " (default plain; see tests/conftest.py)")


@pytest.fixture
def broker(request):
    """The one broker fixture: a private Mosquitto on a free loopback port, stopped after the test.
    Its kind comes from a `broker` mark on the test or its module (`pytest.mark.broker("tls")`):
    - "plain" (default): anonymous access;
    - "persistent": sessions and queued messages survive `broker.stop()` / `broker.start()`;
    - "tls": TLS with a private CA and password logins only (tests/support/tls_broker.py);
    - "locked": configs/mosquitto/ as shipped - TLS, passwords, ACL (tests/support/locked_broker.py);
      one per test module, because it takes seconds to set up."""
    mark = request.node.get_closest_marker("broker")
    kind = mark.args[0] if mark else "plain"
    if kind not in BROKER_KINDS:
        raise ValueError(f"pytest.mark.broker({kind!r}): the kinds are {', '.join(BROKER_KINDS)}")
    if kind == "locked":
        yield request.getfixturevalue("_locked_broker")
        return
    if kind == "tls":
        from tests.support.tls_broker import tls_broker
        b = tls_broker(request.getfixturevalue("tmp_path"))
    elif kind == "persistent":
        persist = request.getfixturevalue("tmp_path") / "mosq-db"
        persist.mkdir()
        # tests/support/mosquitto.py keeps the current user, so mosquitto may write its persistence file.
        b = Mosquitto(extra_config=f"persistence true\npersistence_location {persist}/\n")
    else:
        b = Mosquitto()
    with b:
        yield b


@pytest.fixture(scope="module")
def _locked_broker(tmp_path_factory):
    """The `broker` fixture's "locked" kind, shared by the tests of one module."""
    from tests.support.locked_broker import LockedBroker
    b = LockedBroker(tmp_path_factory.mktemp("locked-broker"))
    yield b
    b.stop()


@pytest.fixture
def camera():
    """A GStreamer RTSP server streaming a test pattern at 10 fps on a free loopback port."""
    from tests.support.rtsp_camera import RtspCamera
    with RtspCamera(fps=10) as cam:
        yield cam
