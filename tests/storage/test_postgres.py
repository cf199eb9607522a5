"""PostgreSQL-only behaviour: a connection the server drops is re-opened and the operation retried
(a database restart or failover costs a pause, not results); a wrong password fails at start with
the server's reason, not after retries."""
from __future__ import annotations

import time

import psycopg
import pytest

from backend_decryptor.config import BackendConfig
from backend_decryptor.storage import open_storage


def test_dropped_connections_are_reopened_and_the_operation_retried(postgres_server):
    name = postgres_server.fresh_database()
    db = open_storage(BackendConfig.model_validate({"database": postgres_server.database_config(name)}),
                      replica="backend-drop")
    try:
        assert db.apply("gw-1", "cam-1", 1, 100.0, None, lambda old: ({"n": 1}, [])) is not None
        with postgres_server.connect(name) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = 'backend-drop'").fetchall()
        assert killed, "no connection of the storage was found to drop"
        time.sleep(0.2)
        assert db.apply("gw-1", "cam-1", 2, 101.0, None, lambda old: ({"n": old["n"] + 1}, [])) is not None
        assert db.is_seen("gw-1", "cam-1", 1) and db.camera_state("cam-1")[1] == {"n": 2}
    finally:
        db.close()


def test_a_wrong_password_fails_at_start_with_the_reason(tmp_path, postgres_server):
    (tmp_path / "pw").write_text("not-the-password\n")
    section = postgres_server.database_config(postgres_server.fresh_database(), password_file=str(tmp_path / "pw"))
    t = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        open_storage(BackendConfig.model_validate({"database": section}))
    assert time.monotonic() - t < 8, "a refused password must not be retried"
