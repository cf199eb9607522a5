"""Signed, versioned deployment archive: what the owner ships to a gateway.

A zip (ZIP_STORED: the ciphertexts are zstd-compressed already) holding, in this order:
    manifest.json   {"format": "fhe-edge-bundle", "format_version": 2, "model_id", "version",
                     "key_fingerprint", "created" (UTC ISO 8601), "members": {name: {"sha256", "size"}},
                     optional "result_key" (the model's public result key, protected_nn/result_auth.py)}
    plan, context, public_key, relin_key, rotation_keys, params, model_card   (artifacts.MEMBERS)
    signature       Ed25519 over the exact bytes of manifest.json

The reader treats the file as hostile: sizes are bounded before anything is read, only stored
members are accepted (no decompression, hence no zip bomb), the member set must be exactly the
expected one, and the archive must be byte-for-byte the canonical encoding of its contents (the
writer is deterministic), so even a flipped bit in zip metadata that zipfile would ignore is
refused. Never contains a secret key.

`version` (an integer >= 1, signed with the rest of the manifest) orders the bundles of one model:
`backend-decryptor export` writes the store's key version number (1 for the first `protect`,
one more per re-protect, backend_decryptor/store.py), and a gateway refuses a bundle with a lower
version than the one it runs (edge_agent/bundle_watch.py), so a validly signed bundle of a
rotated-out key cannot be rolled back in. Re-exporting the same key version gives the same number.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import struct
import zipfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protected_nn import result_auth
from protected_nn.artifacts import MEMBERS, ModelArtifacts, key_fingerprint_of
from protected_nn.errors import BundleError

FORMAT = "fhe-edge-bundle"
FORMAT_VERSION = 2                      # 2: manifest carries `version`
MANIFEST = "manifest.json"
SIGNATURE = "signature"
MAX_TOTAL_SIZE = 512 * 1024 * 1024     # whole archive and sum of members
MAX_MANIFEST_SIZE = 64 * 1024
MAX_VERSION = 2**53                     # exact in JSON readers of every language
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
_FORBIDDEN_NAME_RE = re.compile(r"secret|private", re.IGNORECASE)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)       # fixed so that the archive is reproducible
_ORDER = (MANIFEST, *MEMBERS, SIGNATURE)
_LOCAL_HEADER_MAGIC = b"PK\x03\x04"


# ---------------------------------------------------------------- writing

def _archive_bytes(manifest_bytes: bytes, members: dict[str, bytes], signature: bytes) -> bytes:
    """The canonical archive for these contents; used by both writer and reader."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in _ORDER:
            data = manifest_bytes if name == MANIFEST else signature if name == SIGNATURE else members[name]
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return out.getvalue()


def _manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def _valid_version(version) -> bool:
    return type(version) is int and 1 <= version <= MAX_VERSION


def build_bundle(model_id: str, artifacts: ModelArtifacts, signing_key: Ed25519PrivateKey,
                 forbidden: bytes | None = None, created: datetime | None = None, version: int = 1,
                 result_key: str | None = None) -> bytes:
    """The bundle as bytes. `forbidden` = the secret key: refused if it occurs in any member.
    `version`: the model's key version (see the module doc); 1 for bundles made outside a store.
    `result_key`: the model's public result key (protected_nn/result_auth.py); with it the gateway
    authenticates results with envelope v3, without it with per-message Ed25519 signatures (v2)."""
    if not isinstance(model_id, str) or not _ID_RE.match(model_id):
        raise BundleError(f"model id {model_id!r}: expected 1..64 chars of [A-Za-z0-9._-]")
    if not _valid_version(version):
        raise BundleError(f"bundle version {version!r}: expected an integer in 1..{MAX_VERSION}")
    members = artifacts.as_members()
    if set(members) != set(MEMBERS):
        raise BundleError(f"artifacts have members {sorted(members)}, expected {list(MEMBERS)}")
    for name, data in members.items():
        # Defence in depth: the secret key must never reach a gateway, whatever a caller does.
        if _FORBIDDEN_NAME_RE.search(name):
            raise BundleError(f"refusing to bundle a member named {name!r}")
        if forbidden and forbidden in data:
            raise BundleError(f"refusing to bundle: member {name!r} contains the secret key")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "version": version,
        "key_fingerprint": artifacts.key_fingerprint,
        "created": (created or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "members": {name: {"sha256": hashlib.sha256(members[name]).hexdigest(), "size": len(members[name])}
                    for name in MEMBERS},
    }
    if result_key is not None:
        result_auth.parse_public(result_key)
        manifest["result_key"] = result_key
    manifest_bytes = _manifest_bytes(manifest)
    signature = signing_key.sign(manifest_bytes)
    data = _archive_bytes(manifest_bytes, members, signature)
    if len(data) > MAX_TOTAL_SIZE:
        raise BundleError(f"bundle of {len(data)} bytes exceeds the limit of {MAX_TOTAL_SIZE}")
    return data


def write_bundle(path, model_id: str, artifacts: ModelArtifacts, signing_key: Ed25519PrivateKey,
                 forbidden: bytes | None = None, version: int = 1, result_key: str | None = None) -> dict:
    """Write the signed bundle to `path` atomically (temp file + rename); returns the manifest.
    A failed write (disk full, `path` a folder) raises and leaves no temp file behind."""
    data = build_bundle(model_id, artifacts, signing_key, forbidden, version=version, result_key=result_key)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return read_bundle(data, signing_key.public_key())[0]


# ---------------------------------------------------------------- reading

def read_file_bounded(path, limit: int | None = None) -> bytes:
    """A file's bytes, refused before reading anything if it is larger than `limit` (and read with
    a cap, in case it grows meanwhile): a huge or endless file at the bundle path costs nothing.
    Only regular files (O_NONBLOCK: a FIFO put there cannot block the reader on open)."""
    path, limit = Path(path), MAX_TOTAL_SIZE if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"bundle {path} is not a regular file")
            if st.st_size > limit:
                raise BundleError(f"bundle {path}: {st.st_size} bytes exceeds the limit of {limit}")
            data = f.read(limit + 1)
    except OSError as e:
        raise BundleError(f"cannot read bundle {path}: {e.strerror or e}") from e
    if len(data) > limit:
        raise BundleError(f"bundle {path} grew beyond the limit of {limit} bytes while being read")
    return data


def _read_source(path_or_bytes) -> bytes:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    else:
        data = read_file_bounded(path_or_bytes)
    if len(data) > MAX_TOTAL_SIZE:
        raise BundleError(f"bundle of {len(data)} bytes exceeds the limit of {MAX_TOTAL_SIZE}")
    return data


def _check_entries(infos: list[zipfile.ZipInfo], archive_size: int) -> None:
    names = [i.filename for i in infos]
    dupes = sorted(n for n, count in Counter(names).items() if count > 1)
    if dupes:
        raise BundleError(f"bundle has duplicate members: {', '.join(dupes)}")
    unknown = sorted(set(names) - set(_ORDER))
    if unknown:
        raise BundleError(f"bundle has unknown members: {', '.join(repr(n) for n in unknown)}")
    missing = [n for n in _ORDER if n not in names]
    if missing:
        raise BundleError(f"bundle is missing members: {', '.join(missing)}")
    total = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise BundleError(f"bundle member {info.filename!r} is compressed; only stored members are accepted")
        if info.flag_bits & 0x1:
            raise BundleError(f"bundle member {info.filename!r} is encrypted")
        total += info.file_size
    # Stored members cannot declare more than the archive holds; a lie here is a crafted file.
    if total > archive_size or total > MAX_TOTAL_SIZE:
        raise BundleError(f"bundle members declare {total} bytes, more than the archive's {archive_size}")
    if next(i for i in infos if i.filename == MANIFEST).file_size > MAX_MANIFEST_SIZE:
        raise BundleError("bundle manifest is larger than 64 KB")


def _parse_manifest(manifest_bytes: bytes) -> dict:
    try:
        manifest = json.loads(manifest_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"bundle manifest is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise BundleError("bundle manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"not an {FORMAT} bundle (format={manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle format version {manifest.get('format_version')!r} is not supported "
                          f"(this software reads version {FORMAT_VERSION}; export the bundle again with "
                          f"`backend-decryptor export`)")
    for key in ("model_id", "key_fingerprint"):
        if not isinstance(manifest.get(key), str) or not _ID_RE.match(manifest[key]):
            raise BundleError(f"bundle manifest field {key} is missing or malformed")
    if not _valid_version(manifest.get("version")):
        raise BundleError(f"bundle manifest field version is missing or not an integer in 1..{MAX_VERSION}")
    if not isinstance(manifest.get("created"), str):
        raise BundleError("bundle manifest field created is missing")
    if "result_key" in manifest:
        try:
            result_auth.parse_public(manifest["result_key"])
        except ValueError as e:
            raise BundleError(f"bundle manifest field result_key: {e}") from None
    members = manifest.get("members")
    if not isinstance(members, dict) or set(members) != set(MEMBERS):
        raise BundleError(f"bundle manifest must list exactly the members {list(MEMBERS)}")
    for name, entry in members.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not _HEX64_RE.match(entry["sha256"]) or type(entry.get("size")) is not int
                or entry["size"] < 0):
            raise BundleError(f"bundle manifest entry for {name!r} is malformed")
    return manifest


def read_bundle(path_or_bytes, owner_public_key: Ed25519PublicKey | None) -> tuple[dict, ModelArtifacts]:
    """Open and check a bundle -> (manifest, artifacts). BundleError on anything wrong.

    With `owner_public_key`, the manifest signature must verify; with None the signature is not
    checked (the caller must say so to the user) but every other check still runs."""
    manifest, members = read_bundle_members(path_or_bytes, owner_public_key)
    return manifest, ModelArtifacts.from_members({name: bytes(view) for name, view in members.items()})


def read_bundle_members(path_or_bytes, owner_public_key: Ed25519PublicKey | None) -> tuple[dict, dict]:
    """As read_bundle, with every check of it, but the members are read-only views into the
    archive's bytes: a verified bundle held once, for a caller that copies it on anyway (the
    gateway's sealed copy for its workers, edge_agent/sealed_artifacts.py), not three times."""
    data = _read_source(path_or_bytes)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            _check_entries(infos, len(data))
            contents = {info.filename: _stored_member(data, info) for info in infos}
    except BundleError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, NotImplementedError, EOFError,
            OverflowError, RuntimeError, KeyError, UnicodeError, OSError, struct.error) as e:
        # zipfile reports damage through many exception types; to callers it is one thing.
        raise BundleError(f"bundle is not a readable archive: {e}") from e
    manifest_bytes, signature = bytes(contents[MANIFEST]), bytes(contents[SIGNATURE])
    if owner_public_key is not None:
        try:
            owner_public_key.verify(signature, manifest_bytes)
        except InvalidSignature:
            raise BundleError("bundle signature does not verify against the owner key "
                              "(tampered with, or signed by another owner)") from None
    manifest = _parse_manifest(manifest_bytes)
    for name in MEMBERS:
        entry, member = manifest["members"][name], contents[name]
        if len(member) != entry["size"] or hashlib.sha256(member).hexdigest() != entry["sha256"]:
            raise BundleError(f"bundle member {name!r} does not match the manifest (altered)")
    members = {n: contents[n] for n in MEMBERS}
    if key_fingerprint_of(members["public_key"]) != manifest["key_fingerprint"]:
        raise BundleError("bundle public key does not match the manifest's key fingerprint")
    # Also what makes the views above trustworthy: local headers, CRCs and every other byte of
    # the archive are exactly what the writer makes of these contents.
    if _archive_bytes(manifest_bytes, members, signature) != data:
        raise BundleError("bundle archive is not in canonical form (altered zip metadata)")
    return manifest, members


def _stored_member(data: bytes, info: zipfile.ZipInfo) -> memoryview:
    """A stored member's bytes as a view into the archive (no copy), found through its local
    header. Whatever a crafted header makes this read is refused by the checks that follow."""
    offset = info.header_offset
    if offset < 0 or data[offset:offset + 4] != _LOCAL_HEADER_MAGIC:
        raise BundleError(f"bundle member {info.filename!r} has no local header where the directory says")
    name_len, extra_len = struct.unpack_from("<HH", data, offset + 26)
    start = offset + 30 + name_len + extra_len
    if start + info.file_size > len(data):
        raise BundleError(f"bundle member {info.filename!r} extends beyond the archive")
    return memoryview(data)[start:start + info.file_size]


# ---------------------------------------------------------------- owner keys (PEM)

def generate_owner_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def save_private_key(key: Ed25519PrivateKey, path) -> None:
    """Write a PEM private key readable by the owner only (created 0600, never widened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(key))


def save_public_key(key, path) -> None:
    Path(path).write_bytes(public_key_pem(key))


def load_owner_private_key(path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise BundleError(f"cannot read owner signing key {path}: {e.strerror or e}") from e
    except (ValueError, TypeError) as e:
        raise BundleError(f"owner signing key {path} is not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"owner signing key {path} is not an Ed25519 key")
    return key


def load_owner_public_key(path) -> Ed25519PublicKey:
    """Load the owner's Ed25519 public key (PEM) that bundles must be signed with."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read owner public key {path}: {e.strerror or e}") from e
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise BundleError(f"owner public key {path} is not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"owner public key {path} is not an Ed25519 key")
    return key
