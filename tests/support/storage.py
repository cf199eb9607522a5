"""The `make_db` fixture: storages of one test database, for SQLite and for PostgreSQL alike.

`make_db(replica, outbox_lease)` opens one more storage (its own connections, as another replica
would) on the SAME database; all are closed after the test. Parametrized, so every test using it
runs against both implementations.
"""
from __future__ import annotations

import pytest

from backend_decryptor.config import BackendConfig
from backend_decryptor.storage import open_storage


def backend_config(kind: str, tmp_path, request, **over) -> BackendConfig:
    """A BackendConfig whose `database:` is a fresh SQLite file or PostgreSQL database."""
    if kind == "sqlite":
        data = {"state_db": str(tmp_path / "state.db")}
    else:
        pg = request.getfixturevalue("postgres_server")
        data = {"database": pg.database_config(pg.fresh_database())}
    return BackendConfig.model_validate({**data, **over})


@pytest.fixture(params=["sqlite", "postgresql"])
def make_db(request, tmp_path):
    cfg = backend_config(request.param, tmp_path, request)
    opened = []

    def make(replica: str = "backend-a", outbox_lease: float = 30.0):
        c = cfg.model_copy(update={"database": cfg.database.model_copy(update={"outbox_lease": outbox_lease})})
        db = open_storage(c, replica=replica)
        opened.append(db)
        return db

    make.kind = request.param
    yield make
    for db in opened:
        db.close()
