"""The owner's model store: one folder per store.

    <root>/                       mode 0700
      index.sqlite                models (one row per key version) and exports
      owner_ed25519.pem           bundle signing key (0600), created on first use
      owner_ed25519.pub.pem       its public half: what gateways are configured with
      models/<model_id>/<key_fingerprint>/
        plan, context, public_key, relin_key, rotation_keys, params, model_card   (public members)
        secret_key                mode 0600; the only place a secret key is ever written

Protecting a model again under the same id adds a new key version and makes it active; old
versions stay so that results still in flight (encrypted under the old key) can be decrypted,
until the owner retires them (`retire`: the key folder, secret key included, is deleted and the
index row kept, marked retired, so the backend stops accepting results under that key).

Every key version has a number, 1 for a model's first `protect` and one more for each later one,
never reused (retired rows keep theirs). It is the bundle's `version` (protected_nn/bundle.py):
gateways refuse a bundle older than the one they run, so an old key cannot be rolled back in.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import threading
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

from protected_nn import bundle
from protected_nn.artifacts import MEMBERS, ModelArtifacts
from protected_nn.errors import ProtectedNNError

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
SIGNING_KEY = "owner_ed25519.pem"
SIGNING_PUB = "owner_ed25519.pub.pem"
SECRET_KEY = "secret_key"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT NOT NULL, key_fingerprint TEXT NOT NULL, created TEXT NOT NULL,
    active INTEGER NOT NULL, onnx_sha256 TEXT NOT NULL, report_json TEXT NOT NULL,
    version INTEGER, retired TEXT,
    PRIMARY KEY (model_id, key_fingerprint));
CREATE TABLE IF NOT EXISTS exports (
    model_id TEXT NOT NULL, key_fingerprint TEXT NOT NULL, path TEXT NOT NULL,
    sha256 TEXT NOT NULL, created TEXT NOT NULL);
"""


class StoreError(ProtectedNNError):
    """Bad store use: invalid or unknown model id / key, damaged store."""


class UnknownModelError(StoreError):
    """A model id the store does not hold (services count it as reason "unknown_model")."""


class UnknownKeyError(StoreError):
    """A key fingerprint the model does not have, or a retired one (reason "unknown_key")."""


def validate_model_id(model_id) -> str:
    if not isinstance(model_id, str) or not _ID_RE.match(model_id):
        raise StoreError(f"invalid model id {model_id!r}: expected 1..64 characters of [A-Za-z0-9._-]")
    return model_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_private(path: Path, data: bytes) -> None:
    """Create a file readable by the owner only; O_EXCL so an existing file is never reused."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _migrate(db) -> None:
    """Stores made before key versions were numbered: add the columns, number by age."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(models)")}
    if "version" in columns:
        return
    db.execute("BEGIN IMMEDIATE")
    db.execute("ALTER TABLE models ADD COLUMN version INTEGER")
    db.execute("ALTER TABLE models ADD COLUMN retired TEXT")
    db.execute("UPDATE models SET version = (SELECT COUNT(*) FROM models AS o WHERE o.model_id = models.model_id "
               "AND (o.created < models.created OR (o.created = models.created AND o.rowid <= models.rowid)))")
    db.execute("COMMIT")


class Store:
    def __init__(self, root, create: bool = True):
        self.root = Path(root)
        if not self.root.exists():
            if not create:
                raise StoreError(f"store {self.root} does not exist (protect a model into it first)")
            self.root.mkdir(mode=0o700, parents=True)
            os.chmod(self.root, 0o700)  # mkdir's mode is subject to the umask
        elif not self.root.is_dir():
            raise StoreError(f"store {self.root} exists and is not a folder")
        # An existing folder keeps its mode (it may be the user's own); models/ and keys are 0700/0600.
        self._lock = threading.Lock()
        self._owner_models: dict[tuple[str, str], object] = {}
        with self._db() as db:
            db.executescript(_SCHEMA)
            _migrate(db)

    # ------------------------------------------------------------ internals
    def _db(self):
        # One short-lived connection per operation: safe from any thread or process.
        conn = sqlite3.connect(self.root / "index.sqlite", timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return closing(conn)

    def _query(self, sql: str, *params) -> list[sqlite3.Row]:
        with self._db() as db:
            return db.execute(sql, params).fetchall()

    def _model_dir(self, model_id: str, fingerprint: str) -> Path:
        return self.root / "models" / model_id / fingerprint

    def _require_model(self, model_id) -> str:
        validate_model_id(model_id)
        if not self._query("SELECT 1 FROM models WHERE model_id = ? LIMIT 1", model_id):
            known = ", ".join(self.model_ids()) or "none"
            raise UnknownModelError(f"unknown model id {model_id!r} in store {self.root} (known: {known})")
        return model_id

    def _resolve(self, model_id, fingerprint: str | None) -> str:
        self._require_model(model_id)
        if fingerprint is None:
            return self.active_fingerprint(model_id)
        if fingerprint not in self.fingerprints(model_id):
            retired = self._query("SELECT version, retired FROM models WHERE model_id = ? AND key_fingerprint = ? "
                                  "AND retired IS NOT NULL", model_id, fingerprint)
            if retired:
                raise UnknownKeyError(f"key {fingerprint} (version {retired[0]['version']}) of model {model_id!r} "
                                      f"was retired on {retired[0]['retired']}")
            raise UnknownKeyError(f"model {model_id!r} has no key {fingerprint!r} "
                                  f"(its keys: {', '.join(self.fingerprints(model_id))})")
        return fingerprint

    # ------------------------------------------------------------ models
    def add_model(self, model_id: str, protected, onnx_sha256: str) -> str:
        """Store a freshly protected model as the active key version; returns its fingerprint."""
        validate_model_id(model_id)
        artifacts: ModelArtifacts = protected.artifacts
        fingerprint = artifacts.key_fingerprint
        if not protected.secret_key:
            raise StoreError("protected model has no secret key; refusing to store it")
        final = self._model_dir(model_id, fingerprint)
        if final.exists() or self._query("SELECT 1 FROM models WHERE model_id = ? AND key_fingerprint = ?",
                                         model_id, fingerprint):
            raise StoreError(f"model {model_id!r} already has key {fingerprint}")
        self._write_version(model_id, artifacts, protected.secret_key)
        report = json.dumps(getattr(protected, "report", {}) or {}, default=str)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE models SET active = 0 WHERE model_id = ?", (model_id,))
            # MAX over every row, retired ones too: a version number is never handed out twice.
            version = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE model_id = ?",
                                 (model_id,)).fetchone()[0]
            db.execute("INSERT INTO models (model_id, key_fingerprint, created, active, onnx_sha256, report_json, "
                       "version) VALUES (?, ?, ?, 1, ?, ?, ?)",
                       (model_id, fingerprint, _now(), onnx_sha256, report, version))
            db.execute("COMMIT")
        return fingerprint

    def _write_version(self, model_id: str, artifacts: ModelArtifacts, secret_key: bytes) -> None:
        final = self._model_dir(model_id, artifacts.key_fingerprint)
        (self.root / "models").mkdir(mode=0o700, exist_ok=True)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = final.with_name(f".{artifacts.key_fingerprint}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        try:
            for name, data in artifacts.as_members().items():
                (tmp / name).write_bytes(data)
            _write_private(tmp / SECRET_KEY, secret_key)
            os.replace(tmp, final)  # a key version appears complete or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def import_version(self, row: dict, artifacts: ModelArtifacts, secret_key: bytes, report_json: str) -> bool:
        """Add a key version exported from another store (`models import-keys`), keeping its number;
        it becomes active if it was active there and is newer than every version here, or if the
        model has no active version here. False if this store already has it."""
        model_id, fingerprint, version = validate_model_id(row["model_id"]), row["key_fingerprint"], int(row["version"])
        if artifacts.key_fingerprint != fingerprint:
            raise StoreError(f"{model_id} v{version}: the public key does not match fingerprint {fingerprint}")
        if not secret_key:
            raise StoreError(f"{model_id} v{version}: no secret key")
        existing = {r["key_fingerprint"]: r for r in self.models() if r["model_id"] == model_id}
        if fingerprint in existing:
            return False
        clash = [r for r in existing.values() if r["version"] == version]
        if clash:
            raise StoreError(f"{model_id}: this store's version {version} is key {clash[0]['key_fingerprint']}, "
                             f"not {fingerprint}: the stores were protected separately")
        self._write_version(model_id, artifacts, secret_key)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            newest = all(version > r["version"] for r in existing.values())
            has_active = db.execute("SELECT 1 FROM models WHERE model_id = ? AND active = 1", (model_id,)).fetchone()
            active = (bool(row["active"]) and newest) or not has_active
            if active:
                db.execute("UPDATE models SET active = 0 WHERE model_id = ?", (model_id,))
            db.execute("INSERT INTO models (model_id, key_fingerprint, created, active, onnx_sha256, report_json, "
                       "version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (model_id, fingerprint, row["created"], int(active), row["onnx_sha256"], report_json, version))
            db.execute("COMMIT")
        return True

    def model_ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT DISTINCT model_id FROM models ORDER BY model_id")]

    def fingerprints(self, model_id: str) -> list[str]:
        """Key versions of a model that are not retired (what the backend accepts), oldest first."""
        self._require_model(model_id)
        return [r[0] for r in self._query(
            "SELECT key_fingerprint FROM models WHERE model_id = ? AND retired IS NULL ORDER BY version",
            model_id)]

    def key_version(self, model_id: str, fingerprint: str | None = None) -> int:
        """The key version's number (1, 2, ...): the bundle version gateways compare."""
        fingerprint = self._resolve(model_id, fingerprint)
        return self._query("SELECT version FROM models WHERE model_id = ? AND key_fingerprint = ?",
                           model_id, fingerprint)[0][0]

    def retire(self, model_id: str, key: str) -> dict:
        """Retire a key version (`key` = its fingerprint or version number): its folder, secret key
        included, is deleted, so results encrypted under it can never be decrypted again; the
        index row stays (marked retired) so that its version number is never reused. The active
        version cannot be retired (protect a new one first). Returns the retired row."""
        self._require_model(model_id)
        rows = [r for r in self.models() if r["model_id"] == model_id
                and (r["key_fingerprint"] == key or str(r["version"]) == str(key))]
        if not rows:
            versions = ", ".join(f"{r['version']} ({r['key_fingerprint']})" for r in self.models()
                                 if r["model_id"] == model_id)
            raise UnknownKeyError(f"model {model_id!r} has no key version {key!r} (its versions: {versions})")
        row = rows[0]
        if row["retired"]:
            raise StoreError(f"key version {row['version']} of model {model_id!r} was already retired on {row['retired']}")
        if row["active"]:
            raise StoreError(f"key version {row['version']} is the active one of model {model_id!r}; protect "
                             "the model again (a new version) and roll it out before retiring this one")
        with self._db() as db:
            db.execute("UPDATE models SET retired = ? WHERE model_id = ? AND key_fingerprint = ?",
                       (_now(), model_id, row["key_fingerprint"]))
        with self._lock:
            self._owner_models.pop((model_id, row["key_fingerprint"]), None)
        # After the index says retired (so no reader goes looking for the files any more).
        shutil.rmtree(self._model_dir(model_id, row["key_fingerprint"]))
        return [r for r in self.models() if r["model_id"] == model_id
                and r["key_fingerprint"] == row["key_fingerprint"]][0]

    def active_fingerprint(self, model_id: str) -> str:
        self._require_model(model_id)
        rows = self._query("SELECT key_fingerprint FROM models WHERE model_id = ? AND active = 1", model_id)
        if len(rows) != 1:
            raise StoreError(f"store index is damaged: model {model_id!r} has {len(rows)} active keys")
        return rows[0][0]

    def model_of_fingerprint(self, fingerprint: str) -> str | None:
        """Which model a key belongs to (to say so when a result names another model's key)."""
        rows = self._query("SELECT model_id FROM models WHERE key_fingerprint = ?", fingerprint)
        return rows[0][0] if rows else None

    def artifacts(self, model_id: str, fingerprint: str | None = None) -> ModelArtifacts:
        fingerprint = self._resolve(model_id, fingerprint)
        folder = self._model_dir(model_id, fingerprint)
        try:
            artifacts = ModelArtifacts.from_members({m: (folder / m).read_bytes() for m in MEMBERS})
        except OSError as e:
            raise StoreError(f"store is damaged: cannot read {model_id}/{fingerprint}: {e}") from e
        if artifacts.key_fingerprint != fingerprint:
            raise StoreError(f"store is damaged: public key in {folder} does not match {fingerprint}")
        return artifacts

    def secret_key(self, model_id: str, fingerprint: str | None = None) -> bytes:
        fingerprint = self._resolve(model_id, fingerprint)
        try:
            return (self._model_dir(model_id, fingerprint) / SECRET_KEY).read_bytes()
        except OSError as e:
            raise StoreError(f"store is damaged: cannot read the secret key of {model_id}/{fingerprint}: {e}") from e

    def owner_model(self, model_id: str, fingerprint: str | None = None):
        """api.OwnerModel for this key version, built once (loading keys is slow) and cached. A
        cached key version is returned without asking the index: this is the decryption workers'
        path, per result; which keys are accepted is the catalog's business (backend_decryptor/
        catalog.py), and a key retired by this Store leaves the cache at once."""
        if fingerprint is not None:
            with self._lock:
                cached = self._owner_models.get((model_id, fingerprint))
            if cached is not None:
                return cached
        fingerprint = self._resolve(model_id, fingerprint)
        key = (model_id, fingerprint)
        with self._lock:
            if key not in self._owner_models:
                from protected_nn import api  # backend only: the gateway never imports this module
                self._owner_models[key] = api.OwnerModel(self.artifacts(*key), self.secret_key(*key))
            return self._owner_models[key]

    def model_card(self, model_id: str, fingerprint: str | None = None) -> dict:
        """A key version's card (default: the active one); reads only that member."""
        fingerprint = self._resolve(model_id, fingerprint)
        try:
            data = (self._model_dir(model_id, fingerprint) / "model_card").read_bytes()
            return json.loads(data) if data else {}
        except (OSError, ValueError) as e:
            raise StoreError(f"store is damaged: cannot read the model card of {model_id}/{fingerprint}: {e}") from e

    def report(self, model_id: str, fingerprint: str | None = None) -> dict:
        fingerprint = self._resolve(model_id, fingerprint)
        rows = self._query("SELECT report_json FROM models WHERE model_id = ? AND key_fingerprint = ?",
                           model_id, fingerprint)
        return json.loads(rows[0][0])

    def models(self) -> list[dict]:
        """Every key version: model_id, key_fingerprint, version, created, active, retired (time or
        None), onnx_sha256."""
        rows = self._query("SELECT model_id, key_fingerprint, version, created, active, retired, onnx_sha256 "
                           "FROM models ORDER BY model_id, version")
        return [dict(r) | {"active": bool(r["active"])} for r in rows]

    # ------------------------------------------------------------ owner signing key
    def signing_key(self):
        """The store's Ed25519 bundle signing key; created (with its .pub.pem) on first use."""
        path = self.root / SIGNING_KEY
        with self._lock:
            if not path.exists():
                # Written aside then hard-linked into place: atomic, and if another process won
                # the race we use its key instead of overwriting it.
                tmp = path.with_name(f".{SIGNING_KEY}.{os.getpid()}.tmp")
                tmp.unlink(missing_ok=True)
                bundle.save_private_key(bundle.generate_owner_key(), tmp)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass
                finally:
                    tmp.unlink()
            key = bundle.load_owner_private_key(path)
        pub = self.root / SIGNING_PUB
        if not pub.exists():
            bundle.save_public_key(key, pub)
        return key

    def owner_public_key_pem(self) -> bytes:
        return bundle.public_key_pem(self.signing_key())

    # ------------------------------------------------------------ exports
    def record_export(self, model_id: str, key_fingerprint: str, path, sha256: str) -> None:
        self._resolve(model_id, key_fingerprint)
        with self._db() as db:
            db.execute("INSERT INTO exports VALUES (?, ?, ?, ?, ?)",
                       (model_id, key_fingerprint, str(Path(path).resolve()), sha256, _now()))

    def exports(self, model_id: str | None = None) -> list[dict]:
        sql = "SELECT model_id, key_fingerprint, path, sha256, created FROM exports"
        rows = self._query(sql + " WHERE model_id = ? ORDER BY rowid", model_id) if model_id else \
            self._query(sql + " ORDER BY rowid")
        return [dict(r) for r in rows]
