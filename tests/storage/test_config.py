"""The backend config's `database:` section: SQLite by default (state_db) or by path, PostgreSQL by
URL with the password from a file or systemd credential and libpq TLS options; the factory opens
the right storage; `alerts` and `check-config` read from either."""
from __future__ import annotations

import subprocess
import sys

import pytest
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError

from backend_decryptor.config import BackendConfig, load_config
from backend_decryptor.storage import open_storage
from backend_decryptor.storage.postgres import PostgresStateDB
from backend_decryptor.storage.sqlite import StateDB


def test_absent_or_a_path_is_the_embedded_sqlite(tmp_path):
    (tmp_path / "a.yaml").write_text("state_db: state/a.db\n")
    cfg = load_config(tmp_path / "a.yaml")
    assert not cfg.database.is_postgres and cfg.sqlite_path() == tmp_path / "state" / "a.db"
    (tmp_path / "b.yaml").write_text("database: other/b.db\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.sqlite_path() == tmp_path / "other" / "b.db"
    db = open_storage(cfg)
    assert isinstance(db, StateDB) and (tmp_path / "other" / "b.db").exists()
    db.close()


def test_postgresql_url_password_file_and_tls_options(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "db-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    (tmp_path / "c.yaml").write_text(
        "mqtt: {client_id: backend-7}\n"
        "database:\n  url: postgresql://backend@db.example:5433/fhe_edge\n"
        "  password_file: ${CREDENTIALS_DIRECTORY}/db-password\n  sslrootcert: db-ca.pem\n  sslmode: verify-ca\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.database.is_postgres and cfg.database.password() == "s3cret"
    info = conninfo_to_dict(cfg.database.conninfo("backend-7"))
    assert info["host"] == "db.example" and info["port"] == "5433" and info["dbname"] == "fhe_edge"
    assert info["sslmode"] == "verify-ca" and info["sslrootcert"] == str(tmp_path / "db-ca.pem")
    assert info["application_name"] == "backend-7" and "password" not in info
    assert cfg.describe_database() == "postgresql backend@db.example:5433/fhe_edge sslmode=verify-ca"
    assert BackendConfig.model_validate({"database": "postgresql://u@h/d"}).database.sslmode == "verify-full"


def test_bad_database_settings_are_refused_with_the_reason():
    with pytest.raises(ValidationError, match="database.password_file"):
        BackendConfig.model_validate({"database": "postgresql://backend:hunter2@db/fhe"})
    with pytest.raises(ValidationError, match="sslmode"):
        BackendConfig.model_validate({"database": {"url": "postgresql://u@h/d", "sslmode": "sometimes"}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        BackendConfig.model_validate({"database": {"url": "postgresql://u@h/d", "pasword_file": "x"}})
    cfg = BackendConfig.model_validate({"database": {"url": "postgresql://u@h/d", "password_file": "/nonexistent"}})
    with pytest.raises(ValueError, match="/nonexistent: cannot read"):
        cfg.database.password()


def test_alerts_command_reads_postgresql(tmp_path, postgres_server):
    name = postgres_server.fresh_database()
    section = postgres_server.database_config(name)
    cfg = BackendConfig.model_validate({"database": section})
    db = open_storage(cfg, replica="backend-1")
    assert isinstance(db, PostgresStateDB)
    from backend_decryptor.alerts import AlertEvent
    db.apply("gw-1", "cam-pg", 1, 1e10, None, lambda old: ({}, [
        AlertEvent("x1", "cam-pg", None, "crowd", "raised", "high", 1e10, 1e10, {"event_no": 1})]))
    db.close()
    (tmp_path / "b.yaml").write_text(
        f"database: {{url: '{section['url']}', password_file: '{section['password_file']}', sslmode: disable}}\n")
    out = subprocess.run([sys.executable, "-m", "backend_decryptor.cli", "alerts", "--since", "1h",
                          "--config", str(tmp_path / "b.yaml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "cam-pg" in out.stdout and "x1" in out.stdout and "camera cam-pg: 1 inferences, 1 raised" in out.stdout


def test_synchronous_commit_off_reaches_the_session(postgres_server):
    section = postgres_server.database_config(postgres_server.fresh_database(), synchronous_commit=False)
    cfg = BackendConfig.model_validate({"database": section})
    assert "synchronous_commit=off" in cfg.database.conninfo()
    db = open_storage(cfg)
    try:
        assert db._one("SHOW synchronous_commit")[0] == "off"
    finally:
        db.close()
    db = open_storage(BackendConfig.model_validate({"database": {**section, "synchronous_commit": True}}))
    try:
        assert db._one("SHOW synchronous_commit")[0] == "on"
    finally:
        db.close()


def test_tls_verify_full_against_the_servers_ca_and_a_wrong_ca_is_refused(tmp_path, postgres_server):
    name = postgres_server.fresh_database()
    section = postgres_server.database_config(name, sslmode="verify-full", sslrootcert=str(postgres_server.ca_file))
    section["url"] = section["url"].replace("127.0.0.1", "localhost")   # the certificate's name
    db = open_storage(BackendConfig.model_validate({"database": section}))
    try:
        assert db._one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[0] is True
    finally:
        db.close()
    import psycopg
    other = tmp_path / "other-ca"
    subprocess.run(["sh", "scripts/gen-broker-certs.sh", str(other)], check=True, capture_output=True)
    wrong = {**section, "sslrootcert": str(other / "ca.crt")}
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        open_storage(BackendConfig.model_validate({"database": wrong}))


def test_group_commit_settings_default_and_errors_name_file_line_and_field(tmp_path):
    from backend_decryptor.config import ConfigError
    (tmp_path / "g.yaml").write_text("database:\n  batch_max: 8\n  batch_wait: 3ms\n")
    cfg = load_config(tmp_path / "g.yaml")
    assert cfg.database.batch_max == 8 and cfg.database.batch_wait == pytest.approx(0.003)
    defaults = BackendConfig().database
    assert defaults.batch_max == 32 and defaults.batch_wait == 0.0
    for body, field in (("database:\n  url: x.db\n  batch_max: 0\n", "database.batch_max"),
                        ("database:\n  batch_wait: 2s\n", "database.batch_wait"),
                        ("database:\n  batch_size: 8\n", "database.batch_size")):
        (tmp_path / "bad.yaml").write_text(body)
        with pytest.raises(ConfigError) as err:
            load_config(tmp_path / "bad.yaml")
        line = body.count("\n", 0, body.index(field.split(".")[1])) + 1
        assert f"bad.yaml:{line}: {field}" in str(err.value), str(err.value)
