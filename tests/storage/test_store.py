"""Owner store on a real SQLite file: key versions, modes, unknown ids, signing key, exports."""
import json
import sqlite3
import stat

import pytest

from backend_decryptor.store import Store, StoreError, UnknownKeyError, UnknownModelError
from protected_nn import bundle
from tests.support.cli import api_ready
from tests.support.fake_models import fake_artifacts, fake_protected
from tests.support.tiny_models import square_model


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_and_modes(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    fp = store.add_model("crowd-v1", fake_protected(1), onnx_sha256="ab" * 32)
    assert mode(root) == 0o700
    folder = root / "models" / "crowd-v1" / fp
    assert mode(folder / "secret_key") == 0o600
    assert (folder / "secret_key").read_bytes() == b"SECRET-1"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["secret_key", "plan", "context", "public_key",
                                                              "relin_key", "rotation_keys", "params", "model_card"])
    # The secret key exists exactly once in the whole store.
    hits = [p for p in root.rglob("*") if p.is_file() and b"SECRET-1" in p.read_bytes()]
    assert hits == [folder / "secret_key"]
    with sqlite3.connect(root / "index.sqlite") as db:
        rows = db.execute("SELECT model_id, key_fingerprint, active, onnx_sha256, report_json FROM models").fetchall()
    assert rows == [("crowd-v1", fp, 1, "ab" * 32, json.dumps({"layers": [1]}))]


def test_key_versions(tmp_path):
    store = Store(tmp_path / "s")
    fp1 = store.add_model("m", fake_protected(1), "0" * 64)
    fp2 = store.add_model("m", fake_protected(2), "0" * 64)
    assert fp1 != fp2
    assert store.active_fingerprint("m") == fp2
    assert store.fingerprints("m") == [fp1, fp2]
    assert store.artifacts("m") == fake_artifacts(2)
    assert store.artifacts("m", fp1) == fake_artifacts(1)       # old key kept for in-flight results
    assert store.secret_key("m", fp1) == b"SECRET-1"
    assert store.report("m") == {"layers": [2]}
    assert store.model_card("m") == {"outputs": [{"name": "a", "index": 0, "kind": "count"}]}
    assert store.model_of_fingerprint(fp1) == "m"
    assert [r["active"] for r in store.models()] == [False, True]
    assert [r["version"] for r in store.models()] == [1, 2]
    assert store.key_version("m") == 2 and store.key_version("m", fp1) == 1
    reopened = Store(tmp_path / "s")                             # survives a restart
    assert reopened.active_fingerprint("m") == fp2 and reopened.model_ids() == ["m"]
    with pytest.raises(StoreError, match="already has key"):
        store.add_model("m", fake_protected(2), "0" * 64)


def test_unknown_ids_name_the_known_ones(tmp_path):
    store = Store(tmp_path / "s")
    store.add_model("alpha", fake_protected(1), "0" * 64)
    store.add_model("beta", fake_protected(2), "0" * 64)
    with pytest.raises(UnknownModelError, match="unknown model id 'gamma'.*known: alpha, beta"):
        store.artifacts("gamma")
    with pytest.raises(UnknownKeyError, match="has no key 'ffff'"):
        store.artifacts("alpha", "ffff")
    for bad in ("", "a/b", "../x", "x" * 65, "é"):
        with pytest.raises(StoreError, match="invalid model id"):
            store.add_model(bad, fake_protected(3), "0" * 64)
        with pytest.raises(StoreError, match="invalid model id"):
            store.fingerprints(bad)


def test_signing_key_created_once(tmp_path):
    store = Store(tmp_path / "s")
    k1 = store.signing_key()
    assert mode(tmp_path / "s" / "owner_ed25519.pem") == 0o600
    assert Store(tmp_path / "s").owner_public_key_pem() == bundle.public_key_pem(k1)
    pub = bundle.load_owner_public_key(tmp_path / "s" / "owner_ed25519.pub.pem")
    assert bundle.public_key_pem(pub) == bundle.public_key_pem(k1)


def test_exports_recorded(tmp_path):
    store = Store(tmp_path / "s")
    fp = store.add_model("m", fake_protected(1), "0" * 64)
    store.record_export("m", fp, tmp_path / "m.bundle", "cd" * 32)
    [row] = store.exports("m")
    assert row["key_fingerprint"] == fp and row["sha256"] == "cd" * 32
    assert row["path"].endswith("m.bundle")
    with pytest.raises(UnknownKeyError):
        store.record_export("m", "0000", tmp_path / "x", "0")


def test_store_path_that_is_a_file_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        Store(tmp_path / "f")


@pytest.mark.skipif(not api_ready(), reason="protected_nn.api.protect not implemented yet")
def test_owner_model_cached_and_decrypts(tmp_path):
    import numpy as np
    from protected_nn import api
    path, run_onnx = square_model(tmp_path)
    protected = api.protect(path)
    store = Store(tmp_path / "s")
    store.add_model("tiny", protected, "0" * 64)
    owner = store.owner_model("tiny")
    assert store.owner_model("tiny") is owner
    x = np.random.default_rng(0).uniform(0, 1, (1, 8)).astype(np.float32)
    y = owner.decrypt(api.EdgeModel(store.artifacts("tiny")).infer(x))
    expected = run_onnx(x)
    assert np.max(np.abs(y - expected)) <= 1e-2 * max(np.ptp(expected), 1e-6) + 1e-3


def test_retire_removes_the_key_and_never_reuses_its_number(tmp_path):
    store = Store(tmp_path / "s")
    fp1 = store.add_model("m", fake_protected(1), "0" * 64)
    fp2 = store.add_model("m", fake_protected(2), "0" * 64)
    with pytest.raises(StoreError, match="is the active one"):
        store.retire("m", "2")
    with pytest.raises(UnknownKeyError, match="no key version '9'.*1 \\(" + fp1):
        store.retire("m", "9")
    row = store.retire("m", "1")
    assert row["retired"] and row["version"] == 1
    assert store.fingerprints("m") == [fp2]                      # what the backend accepts
    assert not (tmp_path / "s" / "models" / "m" / fp1).exists()  # secret key gone with the folder
    assert not any(b"SECRET-1" in p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file())
    with pytest.raises(UnknownKeyError, match="was retired"):
        store.secret_key("m", fp1)
    with pytest.raises(StoreError, match="already retired"):
        store.retire("m", fp1)
    fp3 = store.add_model("m", fake_protected(3), "0" * 64)
    assert store.key_version("m", fp3) == 3                      # 1 is never handed out again
    store.retire("m", fp2)                                       # by fingerprint too
    assert [(r["version"], bool(r["retired"]), r["active"]) for r in store.models()] == \
        [(1, True, False), (2, True, False), (3, False, True)]


def test_store_from_before_versions_is_numbered_by_age(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    with sqlite3.connect(root / "index.sqlite") as db:   # the schema as shipped before key versions
        db.executescript("""
            CREATE TABLE models (model_id TEXT NOT NULL, key_fingerprint TEXT NOT NULL, created TEXT NOT NULL,
                active INTEGER NOT NULL, onnx_sha256 TEXT NOT NULL, report_json TEXT NOT NULL,
                PRIMARY KEY (model_id, key_fingerprint));
            INSERT INTO models VALUES ('a', 'f2', '2026-01-02T00:00:00+00:00', 1, '', '{}');
            INSERT INTO models VALUES ('a', 'f1', '2026-01-01T00:00:00+00:00', 0, '', '{}');
            INSERT INTO models VALUES ('b', 'g1', '2026-01-01T00:00:00+00:00', 1, '', '{}');""")
    store = Store(root)
    assert [(r["model_id"], r["key_fingerprint"], r["version"]) for r in store.models()] == \
        [("a", "f1", 1), ("a", "f2", 2), ("b", "g1", 1)]
    assert store.fingerprints("a") == ["f1", "f2"]
