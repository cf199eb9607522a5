"""Provisioning a second backend host: `models export-keys` writes only the named models' keys
(0600, never over a file), `models import-keys` adds them keeping version numbers, and a replica
refuses to start while its store lacks a key the shared database says is active."""
from __future__ import annotations

import io
import stat
import tarfile

import numpy as np
import pytest

from backend_decryptor.cli import main as cli
from backend_decryptor.config import BackendConfig
from backend_decryptor.service import Service
from backend_decryptor.storage import open_storage
from backend_decryptor.storage.active_keys import MissingKeys, record_and_check
from backend_decryptor.store import Store
from tests.support.backend import rules
from tests.support.fake_models import fake_protected


def two_model_store(root) -> Store:
    store = Store(root)
    store.add_model("crowd", fake_protected(1), "aa" * 32)
    store.add_model("crowd", fake_protected(2), "aa" * 32)      # v2, active
    store.add_model("other", fake_protected(3), "bb" * 32)
    store.signing_key()
    return store


def versions(store: Store, model_id: str) -> list[tuple]:
    return [(r["version"], r["key_fingerprint"], r["active"]) for r in store.models() if r["model_id"] == model_id]


def test_export_holds_only_the_named_model_and_import_keeps_its_versions(tmp_path, capsys):
    a = two_model_store(tmp_path / "a")
    out = tmp_path / "crowd.keys"
    assert cli(["models", "--store", str(a.root), "export-keys", "crowd", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = out.read_bytes()
    assert b"SECRET-1" in data and b"SECRET-2" in data
    assert b"SECRET-3" not in data and b"PRIVATE KEY" not in data            # not the other model, not the signing key
    with tarfile.open(out) as tar:
        assert {n.split("/")[0] for n in tar.getnames()} == {"manifest.json", "crowd"}
    assert cli(["models", "--store", str(a.root), "export-keys", "crowd", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    b_root = tmp_path / "b"
    assert cli(["models", "--store", str(b_root), "import-keys", str(out)]) == 0
    b = Store(b_root, create=False)
    assert b.model_ids() == ["crowd"] and versions(b, "crowd") == versions(a, "crowd")
    for fp in a.fingerprints("crowd"):
        assert b.secret_key("crowd", fp) == a.secret_key("crowd", fp)
        assert b.artifacts("crowd", fp) == a.artifacts("crowd", fp)
        assert stat.S_IMODE((b_root / "models" / "crowd" / fp / "secret_key").stat().st_mode) == 0o600
    capsys.readouterr()
    assert cli(["models", "--store", str(b_root), "import-keys", str(out)]) == 0      # again: nothing new
    assert "0 key version(s) added" in capsys.readouterr().out
    only = tmp_path / "active.keys"
    assert cli(["models", "--store", str(a.root), "export-keys", "other", "crowd", "--active-only",
                "--out", str(only)]) == 0
    c = Store(tmp_path / "c")
    assert cli(["models", "--store", str(c.root), "import-keys", str(only)]) == 0
    assert versions(c, "crowd") == [(2, a.active_fingerprint("crowd"), True)] and versions(c, "other")
    assert cli(["models", "--store", str(a.root), "export-keys", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model id 'nope'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_damaged_or_crafted_key_file_is_refused_and_changes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.keys"
    with tarfile.open(bad, "w") as tar:
        manifest = (b'{"format": "fhe-edge-backend-keys", "version": 1, "keys": [{"model_id": "../../etc", '
                    b'"key_fingerprint": "ab", "version": 1, "created": "x", "active": true, '
                    b'"onnx_sha256": "x", "report_json": {}}]}')
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    assert cli(["models", "--store", str(tmp_path / "s"), "import-keys", str(bad)]) == 2
    assert "invalid model id '../../etc'" in capsys.readouterr().err
    (tmp_path / "junk.keys").write_bytes(b"not a tar file at all" * 100)
    assert cli(["models", "--store", str(tmp_path / "s"), "import-keys", str(tmp_path / "junk.keys")]) == 2
    assert "not a key file" in capsys.readouterr().err
    assert not (tmp_path / "s" / "models").exists()


def test_imported_real_keys_decrypt_on_the_second_host(tmp_path):
    from protected_nn import api
    from tests.support.tiny_models import square_model
    path, run = square_model(tmp_path)
    prot = api.protect(path)
    Store(tmp_path / "a").add_model("tiny", prot, "cc" * 32)
    out = tmp_path / "tiny.keys"
    assert cli(["models", "--store", str(tmp_path / "a"), "export-keys", "tiny", "--out", str(out)]) == 0
    assert cli(["models", "--store", str(tmp_path / "b"), "import-keys", str(out)]) == 0
    x = np.random.default_rng(1).uniform(-1, 1, (1, 8)).astype(np.float32)
    result = api.EdgeModel(prot.artifacts).infer(x)
    got = Store(tmp_path / "b", create=False).owner_model("tiny").decrypt(result)
    np.testing.assert_allclose(got.reshape(-1), run(x).reshape(-1), atol=0.05 * float(np.ptp(run(x)) + 1))


def test_a_replica_lacking_an_active_key_refuses_to_start(tmp_path, postgres_server):
    a = two_model_store(tmp_path / "a")
    database = postgres_server.database_config(postgres_server.fresh_database())
    db_a = open_storage(BackendConfig.model_validate({"database": database}), replica="host-a")
    assert record_and_check(db_a, a) == [("crowd", a.active_fingerprint("crowd"), 2),
                                         ("other", a.active_fingerprint("other"), 1)]
    out = tmp_path / "crowd.keys"
    assert cli(["models", "--store", str(a.root), "export-keys", "crowd", "--out", str(out)]) == 0
    assert cli(["models", "--store", str(tmp_path / "b"), "import-keys", str(out)]) == 0
    cfg_b = BackendConfig.model_validate({"store": str(tmp_path / "b"), "database": database,
                                          "mqtt": {"client_id": "host-b", "port": 9}})
    with pytest.raises(MissingKeys, match=r"lacks key\(s\) the database says are active: other v1"):
        Service(cfg_b, rules()).start()
    other = tmp_path / "other.keys"
    assert cli(["models", "--store", str(a.root), "export-keys", "other", "--out", str(other)]) == 0
    assert cli(["models", "--store", str(tmp_path / "b"), "import-keys", str(other)]) == 0
    db_b = open_storage(cfg_b)
    assert len(record_and_check(db_b, Store(tmp_path / "b", create=False))) == 2
    # host a protects crowd again (v3): b, still at v2, is refused until it imports v3
    a.add_model("crowd", fake_protected(4), "aa" * 32)
    record_and_check(db_a, a)
    with pytest.raises(MissingKeys, match="crowd v3"):
        record_and_check(db_b, Store(tmp_path / "b", create=False))
    db_a.close()
    db_b.close()
