"""A real PostgreSQL server (Debian's `postgresql` package) on a free loopback port, in a temporary
directory: `initdb` + `pg_ctl`, started once per test session, stopped after.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user the package
creates (or `nobody`) with the temporary directory chowned to it. Host connections need a
password (scram-sha-256), so the tests exercise `database.password_file` for real. `fresh_database()`
gives each test an empty database of its own.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.support import process
from tests.support.mosquitto import free_port

USER = "fhe"
PASSWORD = "pg-test-" + uuid.uuid4().hex[:12]


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL server binaries (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None = ourselves; as root, the package's `postgres` user (or nobody)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


class PostgresServer:
    """`with PostgresServer() as pg:` -> pg.url(dbname), pg.password_file, pg.fresh_database(),
    pg.ca_file (the CA of its TLS certificate)."""

    def __init__(self, durable: bool = False):
        """durable=False turns fsync off (tests: a crash of the test machine loses nothing we
        need); the benchmark keeps PostgreSQL's durable defaults."""
        self.bin = bin_dir()
        if self.bin is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                                    "apt-get install postgresql")
        self.durable = durable
        self.host, self.port = "127.0.0.1", free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.dir / "data"
        self.password_file = self.dir / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.proc: subprocess.Popen | None = None
        self._user = _server_user()

    def _as_server_user(self) -> dict:
        # Popen's user/group drop privileges in the child itself (no runuser in between), so the
        # pid we hold is the postmaster's and a signal to it reaches the server.
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _pg(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, **self._as_server_user(), **kw)

    def start(self, timeout: float = 60.0) -> "PostgresServer":
        pwfile = self.dir / "initdb-password"
        pwfile.write_text(PASSWORD + "\n")
        if self._user is not None:  # the server user must own its directory (and read the initdb password)
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        out = self._pg(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
                       "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
                       "--locale=C", cwd=self.dir, timeout=timeout)
        pwfile.unlink()
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr[-2000:]}")
        settings = self._tls_settings() + [f"port = {self.port}", f"listen_addresses = '{self.host}'",
                    f"unix_socket_directories = '{self.dir}'", "max_connections = 100",
                    "shared_buffers = 32MB", "log_min_messages = warning"]
        if not self.durable:
            settings += ["fsync = off", "full_page_writes = off"]
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(settings) + "\n")
        # The postmaster itself, in the foreground of its own process (not pg_ctl's daemon), so
        # process.stop() can end it and a crashed test run leaves no server behind.
        with open(self.dir / "server.log", "w") as log:
            self.proc = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data)], cwd=self.dir,
                                         stdout=subprocess.DEVNULL, stderr=log, **self._as_server_user())
        process.wait_listening(self.proc, self.host, self.port, timeout, "postgres", self.log)
        self._wait_ready(timeout)
        return self

    def _tls_settings(self) -> list[str]:
        """TLS on (plain connections still allowed): certificates from the project's own
        scripts/gen-broker-certs.sh (a private CA, a server certificate for localhost/127.0.0.1)."""
        tls = self.dir / "tls"
        script = Path(__file__).resolve().parents[2] / "scripts" / "gen-broker-certs.sh"
        out = subprocess.run(["sh", str(script), str(tls)], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"gen-broker-certs.sh failed: {out.stderr[-2000:]}")
        self.ca_file = tls / "ca.crt"
        if self._user is not None:  # PostgreSQL insists its key is its own and 0600
            os.chown(tls / "server.key", self._user.pw_uid, self._user.pw_gid)
            os.chown(tls, self._user.pw_uid, self._user.pw_gid)
        return ["ssl = on", f"ssl_cert_file = '{tls / 'server.crt'}'", f"ssl_key_file = '{tls / 'server.key'}'"]

    def _wait_ready(self, timeout: float) -> None:
        """Listening is not ready: until recovery ends, connections get 'the database system is
        starting up'."""
        import psycopg
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"postgres did not accept connections: {self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        p = self.dir / "server.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{dbname}"

    def database_config(self, dbname: str, **over) -> dict:
        """The backend config's `database:` section for `dbname` on this server."""
        return {"url": self.url(dbname), "password_file": str(self.password_file), "sslmode": "disable", **over}

    def connect(self, dbname: str = "postgres"):
        import psycopg
        return psycopg.connect(self.url(dbname), password=PASSWORD, autocommit=True)

    def fresh_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: PostgreSQL's "fast" shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL for the whole test session (initdb costs seconds); tests take fresh databases."""
    if bin_dir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    with PostgresServer() as pg:
        yield pg
