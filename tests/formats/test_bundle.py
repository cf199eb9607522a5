"""Signed bundle: round trip, every single-byte change refused, wrong owner key refused, crafted zips."""
import hashlib
import io
import json
import random
import zipfile

import pytest

from protected_nn import bundle
from protected_nn.artifacts import MEMBERS
from protected_nn.bundle import BundleError, read_bundle, write_bundle
from tests.support.fake_models import fake_artifacts


@pytest.fixture(scope="module")
def owner():
    return bundle.generate_owner_key()


@pytest.fixture
def bundle_file(tmp_path, owner):
    path = tmp_path / "m.bundle"
    write_bundle(path, "crowd-v1", fake_artifacts(), owner)
    return path


def test_round_trip(bundle_file, owner):
    manifest, artifacts = read_bundle(bundle_file, owner.public_key())
    assert artifacts == fake_artifacts()
    assert manifest["model_id"] == "crowd-v1"
    assert manifest["format"] == "fhe-edge-bundle" and manifest["format_version"] == 2
    assert manifest["version"] == 1                      # the default outside a store
    assert manifest["key_fingerprint"] == artifacts.key_fingerprint
    assert manifest["created"].endswith("+00:00")
    for name in MEMBERS:
        assert manifest["members"][name]["sha256"] == hashlib.sha256(getattr(artifacts, name)).hexdigest()
    with zipfile.ZipFile(bundle_file) as zf:
        assert zf.namelist() == ["manifest.json", *MEMBERS, "signature"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    assert read_bundle(bundle_file.read_bytes(), None)[1] == artifacts  # bytes, unverified


def test_writer_is_deterministic(owner):
    from datetime import datetime, timezone
    t = datetime(2024, 1, 2, tzinfo=timezone.utc)
    a = bundle.build_bundle("m", fake_artifacts(), owner, created=t)
    assert a == bundle.build_bundle("m", fake_artifacts(), owner, created=t)


def test_every_single_byte_change_is_refused(bundle_file, owner):
    data = bundle_file.read_bytes()
    rng = random.Random(1234)
    positions = rng.sample(range(len(data)), 100)
    for pos in positions:
        changed = bytearray(data)
        changed[pos] = (changed[pos] + rng.randint(1, 255)) % 256
        for key in (owner.public_key(), None):  # even without a key, the hashes/canonical form catch it
            with pytest.raises(BundleError):
                read_bundle(bytes(changed), key)


def test_wrong_owner_key_refused(bundle_file):
    other = bundle.generate_owner_key()
    with pytest.raises(BundleError, match="signature does not verify"):
        read_bundle(bundle_file, other.public_key())


def _rezip(entries, compress=zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compress) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return out.getvalue()


def _entries(path):
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def test_member_replaced_and_manifest_rehashed_fails_signature(bundle_file, owner):
    entries = dict(_entries(bundle_file))
    entries["params"] = b"evil weights"
    manifest = json.loads(entries["manifest.json"])
    manifest["members"]["params"] = {"sha256": hashlib.sha256(b"evil weights").hexdigest(), "size": 12}
    entries["manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(BundleError, match="signature"):
        read_bundle(_rezip(entries.items()), owner.public_key())


@pytest.mark.parametrize("mutate,match", [
    (lambda e: e + [("secret_key", b"x")], "unknown members"),
    (lambda e: e + [("../../etc/passwd", b"x")], "unknown members"),
    (lambda e: e + [e[1]], "duplicate"),
    (lambda e: [x for x in e if x[0] != "rotation_keys"], "missing members: rotation_keys"),
])
def test_crafted_member_sets_refused(bundle_file, owner, mutate, match):
    with pytest.warns(UserWarning) if match == "duplicate" else _nullcontext():
        crafted = _rezip(mutate(_entries(bundle_file)))
    with pytest.raises(BundleError, match=match):
        read_bundle(crafted, owner.public_key())


def _nullcontext():
    import contextlib
    return contextlib.nullcontext()


def test_compressed_members_refused(bundle_file, owner):
    crafted = _rezip(_entries(bundle_file), compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(BundleError, match="compressed"):
        read_bundle(crafted, owner.public_key())


def test_archive_above_size_limit_refused(owner, monkeypatch):
    big = _rezip([("manifest.json", b"{}")] + [(m, b"\0" * 1000) for m in MEMBERS] + [("signature", b"")])
    monkeypatch.setattr(bundle, "MAX_TOTAL_SIZE", 2000)
    with pytest.raises(BundleError, match="exceeds the limit"):
        read_bundle(big, owner.public_key())


def test_zip_bomb_declared_sizes_refused_before_reading(bundle_file, owner):
    import struct
    data = bytearray(bundle_file.read_bytes())
    cd = data.index(b"PK\x01\x02")  # first central-directory entry (manifest.json)
    # Declare 2 GB (compressed and uncompressed) for the first central-directory entry.
    data[cd + 20:cd + 28] = struct.pack("<II", 0x7FFFFFFF, 0x7FFFFFFF)
    with pytest.raises(BundleError, match="declare"):
        read_bundle(bytes(data), owner.public_key())


def test_garbage_and_missing_file_refused(tmp_path, owner):
    for data in (b"", b"PK\x03\x04garbage", b"not a zip at all" * 10):
        with pytest.raises(BundleError):
            read_bundle(data, owner.public_key())
    with pytest.raises(BundleError, match="cannot read bundle"):
        read_bundle(tmp_path / "nope.bundle", owner.public_key())


def test_secret_key_never_bundled(tmp_path, owner):
    a = fake_artifacts()
    secret = a.params[10:40]  # pretend the secret key leaked into a member
    with pytest.raises(BundleError, match="contains the secret key"):
        write_bundle(tmp_path / "x.bundle", "m", a, owner, forbidden=secret)
    assert not (tmp_path / "x.bundle").exists()
    write_bundle(tmp_path / "y.bundle", "m", a, owner, forbidden=b"\xff" * 64 + b"not-in-there")


def test_bad_model_id_refused(tmp_path, owner):
    with pytest.raises(BundleError, match="model id"):
        write_bundle(tmp_path / "x.bundle", "../evil", fake_artifacts(), owner)


def test_key_pem_helpers(tmp_path, owner):
    bundle.save_public_key(owner, tmp_path / "o.pub")
    pub = bundle.load_owner_public_key(tmp_path / "o.pub")
    assert bundle.public_key_pem(pub) == bundle.public_key_pem(owner)
    bundle.save_private_key(owner, tmp_path / "o.pem")
    assert (tmp_path / "o.pem").stat().st_mode & 0o777 == 0o600
    assert bundle.public_key_pem(bundle.load_owner_private_key(tmp_path / "o.pem")) == bundle.public_key_pem(owner)
    (tmp_path / "bad.pub").write_text("hello")
    with pytest.raises(BundleError, match="not a PEM public key"):
        bundle.load_owner_public_key(tmp_path / "bad.pub")
    with pytest.raises(BundleError, match="cannot read owner public key"):
        bundle.load_owner_public_key(tmp_path / "missing.pub")


def _resigned(data: bytes, owner, edit) -> bytes:
    """The bundle with its manifest edited and signed again by `owner` (None: the old signature
    kept), in a well-formed archive."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        contents = {i.filename: zf.read(i) for i in zf.infolist()}
    manifest = json.loads(contents["manifest.json"])
    edit(manifest)
    manifest_bytes = bundle._manifest_bytes(manifest)
    members = {m: contents[m] for m in MEMBERS}
    signature = owner.sign(manifest_bytes) if owner else contents["signature"]
    return bundle._archive_bytes(manifest_bytes, members, signature)


def test_version_is_signed_and_checked(tmp_path, owner):
    path = tmp_path / "v.bundle"
    manifest = write_bundle(path, "m", fake_artifacts(), owner, version=7)
    assert manifest["version"] == 7 and read_bundle(path, owner.public_key())[0]["version"] == 7
    for bad in (0, -1, 2**53 + 1, 1.5, "2", True):
        with pytest.raises(BundleError, match="bundle version"):
            bundle.build_bundle("m", fake_artifacts(), owner, version=bad)
    data = path.read_bytes()
    # Without a valid version the manifest is refused even when the owner signed it.
    for edit, match in ((lambda m: m.pop("version"), "field version"),
                        (lambda m: m.update(version="7"), "field version"),
                        (lambda m: m.update(format_version=1), "export the bundle again")):
        with pytest.raises(BundleError, match=match):
            read_bundle(_resigned(data, owner, edit), owner.public_key())
    # Changing the version without the owner key breaks the signature.
    forged = _resigned(data, None, lambda m: m.update(version=9))
    with pytest.raises(BundleError, match="signature does not verify"):
        read_bundle(forged, owner.public_key())


def test_huge_file_refused_before_reading(tmp_path, owner):
    huge = tmp_path / "huge.bundle"
    with open(huge, "wb") as f:
        f.truncate(64 << 30)            # sparse: reading it whole would be a MemoryError
    with pytest.raises(BundleError, match="exceeds the limit"):
        read_bundle(huge, owner.public_key())
    small = tmp_path / "small"
    small.write_bytes(b"x" * 100)
    with pytest.raises(BundleError, match="exceeds the limit of 99"):
        bundle.read_file_bounded(small, limit=99)
    assert bundle.read_file_bounded(small, limit=100) == b"x" * 100
