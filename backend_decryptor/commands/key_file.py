"""The key file that provisions another backend host: the selected models' key versions (secret
keys included) and their index rows, nothing else (no other model, no bundle signing key, no
export history).

A tar archive: `manifest.json` (format, the rows) + `<model id>/<fingerprint>/<member>` for the
public members and `secret_key`. Written 0600 with O_EXCL (never over an existing file, never
readable by anyone else for a moment); read without extracting anything to disk: only the member
names the manifest implies are read, so a crafted archive cannot write files or smuggle paths.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from protected_nn.artifacts import MEMBERS, ModelArtifacts

from backend_decryptor.commands.common import CommandError
from backend_decryptor.store import SECRET_KEY, Store, validate_model_id

FORMAT = "fhe-edge-backend-keys"
ROW_FIELDS = ("model_id", "key_fingerprint", "version", "created", "active", "onnx_sha256")


def selected_rows(store: Store, model_ids: list[str], active_only: bool) -> list[dict]:
    rows = []
    for model_id in dict.fromkeys(model_ids):       # each model once, in the order asked
        store.fingerprints(model_id)                # unknown id: a clear error naming the known ones
        for r in store.models():
            if r["model_id"] == model_id and not r["retired"] and (r["active"] or not active_only):
                rows.append({k: r[k] for k in ROW_FIELDS})
    return rows


def write(store: Store, rows: list[dict], out: Path) -> int:
    """Write the key file; returns its size in bytes."""
    from protected_nn.npy_files import output_error
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CommandError(f"{out} exists: refusing to overwrite a key file") from None
    except OSError as e:
        raise output_error("--out", out, e, "create") from None
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
            manifest = [{**r, "report_json": store.report(r["model_id"], r["key_fingerprint"])} for r in rows]
            _add(tar, "manifest.json", json.dumps({"format": FORMAT, "version": 1, "keys": manifest}).encode())
            for r in rows:
                members = store.artifacts(r["model_id"], r["key_fingerprint"]).as_members()
                members[SECRET_KEY] = store.secret_key(r["model_id"], r["key_fingerprint"])
                for name, data in members.items():
                    _add(tar, f"{r['model_id']}/{r['key_fingerprint']}/{name}", data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        out.unlink(missing_ok=True)      # half a key file is of no use, and holds secret keys
        raise output_error("--out", out, e) from None
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out.stat().st_size


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o600
    tar.addfile(info, io.BytesIO(data))


def read(path: Path):
    """Yield (row, artifacts, secret key, report json) for every key version in the file."""
    try:
        tar = tarfile.open(path, mode="r:")
    except (OSError, tarfile.TarError) as exc:
        raise CommandError(f"{path}: not a key file written by `models export-keys`: {exc}") from None
    with tar:
        def member(name: str) -> bytes:
            try:
                info = tar.getmember(name)
            except KeyError:
                raise CommandError(f"{path}: damaged key file: {name} is missing") from None
            if not info.isreg():
                raise CommandError(f"{path}: damaged key file: {name} is not a regular file")
            return tar.extractfile(info).read()
        try:
            manifest = json.loads(member("manifest.json"))
        except ValueError as exc:
            raise CommandError(f"{path}: damaged key file: manifest.json: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != 1:
            raise CommandError(f"{path}: not a key file written by `models export-keys` (format {FORMAT} v1)")
        for row in manifest.get("keys", []):
            if not isinstance(row, dict) or any(k not in row for k in (*ROW_FIELDS, "report_json")):
                raise CommandError(f"{path}: damaged key file: a manifest entry lacks fields")
            model_id, fp = validate_model_id(row["model_id"]), str(row["key_fingerprint"])
            if not fp.isalnum():
                raise CommandError(f"{path}: damaged key file: bad fingerprint {fp!r}")
            artifacts = ModelArtifacts.from_members({m: member(f"{model_id}/{fp}/{m}") for m in MEMBERS})
            yield row, artifacts, member(f"{model_id}/{fp}/{SECRET_KEY}"), json.dumps(row["report_json"])
