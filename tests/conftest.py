"""Fixtures shared by the test files. A test file that needs another broker set-up (TLS, ACL,
a port kept across restarts) defines its own `broker` fixture, which overrides this one."""
from __future__ import annotations

import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.postgres import postgres_server  # noqa: F401 (session-scoped: one server per run)


@pytest.fixture
def broker():
    """A private Mosquitto on a free loopback port, anonymous access, stopped after the test."""
    with Mosquitto() as b:
        yield b
