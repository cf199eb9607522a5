"""The compact encoding of ciphertexts and keys (ckks/compact.py): real SEAL objects decode to
exactly SEAL's uncompressed bytes, near bits/64 of their size; a malformed encoding is a
BundleError naming the member, never a crash or a silently different key; the SEAL bytes of
bundles made before it still load."""
from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from protected_nn.ckks import compact, seeded
from protected_nn.ckks.context import Ckks, SecretCkks, load_key_members
from protected_nn.ckks.params import CkksParams
from protected_nn.errors import BundleError, KeyMaterialError

PARAMS = CkksParams(8192, (40, 30, 31, 30, 50), 30)   # distinct widths: a row under the wrong prime shows
SCALE = 2.0 ** 30
STEPS = [1, -3, 64]


@pytest.fixture(scope="module")
def owner():
    return SecretCkks.generate(PARAMS, set(STEPS), evaluation_keys=True)


def _vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, PARAMS.slots)


def _objects(owner) -> dict[str, tuple[bytes, str]]:
    """SEAL's uncompressed bytes of every kind of object a bundle carries, seeded and not."""
    he = owner.he
    return {
        "seeded ct, level 0": (seeded.encrypt_symmetric_seeded(he, _vec(1), SCALE, 0, "none"), "ct"),
        "seeded ct, level 2": (seeded.encrypt_symmetric_seeded(he, _vec(2), SCALE, 2, "none"), "ct"),
        "public-key ct, level 1": (owner.encrypt(_vec(3), SCALE, 1).to_bytes("none"), "ct"),
        "seeded public key": (seeded.seeded_public_key(he, "none"), "ct"),
        "public key": (he.to_bytes_public_key("none"), "ct"),
        "seeded relin key": (seeded.seeded_relin_key(he, "none"), "keys"),
        "seeded Galois keys": (seeded.seeded_galois_keys(he, STEPS, "none"), "keys"),
        "Galois keys": (he.to_bytes_rotate_key("none"), "keys"),
    }


def _encode(raw: bytes, kind: str, bits=PARAMS.qi_sizes) -> bytes:
    return (compact.encode_ciphertext if kind == "ct" else compact.encode_kswitch_keys)(raw, bits)


def test_real_objects_round_trip_byte_for_byte_at_bits_over_64(owner):
    for name, (raw, kind) in _objects(owner).items():
        enc = _encode(raw, kind)
        assert compact.decode(enc, name) == raw, name
        # coefficients shrink to the primes' widths: at most the widest over 64 of the raw size
        assert len(enc) < len(raw) * max(PARAMS.qi_sizes) / 64 + 2 ** 17, name


def test_a_prime_narrower_than_its_coefficients_is_refused(owner):
    raw, kind = _objects(owner)["seeded Galois keys"]
    narrow = list(PARAMS.qi_sizes)
    narrow[-1] -= 1                          # the special prime's residues need all 50 bits
    with pytest.raises(ValueError, match="does not fit"):
        _encode(raw, kind, narrow)


def test_compressed_seal_bytes_are_not_encoded(owner):
    with pytest.raises(ValueError, match="compr_mode none"):
        compact.encode_kswitch_keys(seeded.seeded_relin_key(owner.he, "zstd"), PARAMS.qi_sizes)


def test_a_gateway_loads_compact_keys_and_weights_and_computes(owner):
    pub = owner.public_bytes(seeded_keys=True)
    for name in ("public_key", "relin_key", "rotation_keys"):
        assert pub[name].startswith(compact.MAGIC), name
    gateway = Ckks.from_public_bytes(PARAMS, pub["context"], pub["public_key"], pub["relin_key"],
                                     pub["rotation_keys"], set(STEPS))
    x, w = _vec(4), _vec(5)
    weight = gateway.ct_from_bytes(compact.decode(owner.encrypt_to_compact(w, SCALE, 0), "w"))
    prod = gateway.multiply_no_relin(gateway.encrypt(x, SCALE), weight)
    gateway.relinearize(prod)
    gateway.rescale(prod)
    for k in STEPS:
        got = owner.decrypt(gateway.rotate(prod, k))
        assert np.max(np.abs(got - np.roll(x * w, -k))) < 1e-4, k


def test_seal_bytes_of_older_bundles_still_load(owner):
    """Bundles made before the compact encoding carry SEAL's own (zstd) serialization."""
    he = owner.he
    legacy = (seeded.seeded_public_key(he), seeded.seeded_relin_key(he), seeded.seeded_galois_keys(he, STEPS))
    assert all(not m.startswith(compact.MAGIC) for m in legacy)
    pub = owner.public_bytes()
    gateway = Ckks.from_public_bytes(PARAMS, pub["context"], *legacy, set(STEPS))
    x = _vec(6)
    assert np.max(np.abs(owner.decrypt(gateway.rotate(gateway.encrypt(x, SCALE), 1)) - np.roll(x, -1))) < 1e-4


@pytest.fixture(scope="module")
def galois(owner):
    return compact.encode_kswitch_keys(seeded.seeded_galois_keys(owner.he, STEPS, "none"), PARAMS.qi_sizes)


def test_every_truncation_is_a_bundle_error_naming_the_member(galois):
    cuts = sorted(set(range(0, 200)) | set(random.Random(1).sample(range(len(galois)), 200)))
    for cut in cuts:
        with pytest.raises(BundleError, match="rotation_keys"):
            compact.decode(galois[:cut], "bundle member rotation_keys")
    with pytest.raises(BundleError, match="trailing"):
        compact.decode(galois + b"\0", "bundle member rotation_keys")


def test_garbled_headers_are_bundle_errors(galois):
    n_classes = galois[9]
    item_count_at = 10 + 5 * n_classes + 2        # an untrimmed key set: no widths
    cases = {
        "version": (4, b"\x02", "version 2 is not known"),
        "row width": (5, struct.pack("<I", 1000), "rows of 1000 words"),
        "class width": (10, b"\x05", "width outside"),
        "class rows": (11, struct.pack("<I", 2 ** 31), "no item places|declares"),
        "item count": (item_count_at, struct.pack("<I", 2 ** 32 - 1), "truncated|declares|kind"),
        "item kind": (item_count_at + 4, b"\x07", "unknown kind 7"),
        "verbatim length": (item_count_at + 5, struct.pack("<I", 2 ** 32 - 1), "declares"),
    }
    for name, (at, patch, message) in cases.items():
        bad = galois[:at] + patch + galois[at + len(patch):]
        with pytest.raises(BundleError, match=message):
            compact.decode(bad, "bundle member rotation_keys")
    with pytest.raises(BundleError, match="more than 1000 bytes"):
        compact.decode(galois, "bundle member rotation_keys", max_size=1000)


def test_random_and_flipped_members_never_crash(owner, galois):
    """Whatever the bytes, loading gives a working key set or a BundleError, never a crash."""
    pub = owner.public_bytes()
    rng = random.Random(7)
    samples = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) for _ in range(100)]
    samples += [compact.MAGIC + s for s in samples[:50]]
    for _ in range(30):           # one byte changed anywhere (headers, seeds, coefficients)
        b = bytearray(galois)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        samples.append(bytes(b))
    for data in samples:
        try:
            Ckks.from_public_bytes(PARAMS, pub["context"], pub["public_key"], pub["relin_key"], data, set(STEPS))
        except BundleError as exc:
            assert "rotation_keys" in str(exc)
        except Exception as exc:  # noqa: BLE001 - the test's point
            assert "Galois keys for steps" in str(exc), exc   # a changed Galois element: caught by the plan check


def test_coefficients_above_their_prime_are_refused_by_seal(owner, galois):
    """All-ones payload: every residue is 2^bits - 1 >= q_i, which SEAL's load refuses."""
    n_classes = galois[9]
    payload = sum(compact.bitpack.packed_size(struct.unpack_from("<I", galois, 11 + 5 * c)[0] * 8192,
                                              galois[10 + 5 * c]) for c in range(n_classes))
    bad = galois[:-payload] + b"\xff" * payload
    pub = owner.public_bytes()
    with pytest.raises(BundleError, match="rotation_keys: SEAL refuses it"):
        load_key_members(Ckks.new_context(PARAMS), pub["public_key"], b"", bad)


def test_neither_compact_nor_seal_is_named():
    with pytest.raises(BundleError, match="relin_key: neither a compact encoding nor a SEAL object"):
        compact.seal_bytes(b"PK\x03\x04 a zip", "bundle member relin_key")
    assert compact.seal_bytes(b"", "bundle member relin_key") == b""


def _galois_indices(raw: bytes) -> list[int]:
    """The places SEAL's Galois key set fills (its own numbering), read from its layout."""
    off = 16 + 32
    (dim1,) = struct.unpack_from("<Q", raw, off)
    off += 8
    present = []
    for i in range(dim1):
        (dim2,) = struct.unpack_from("<Q", raw, off)
        off += 8
        present += [i] * bool(dim2)
        for _ in range(dim2):
            off += struct.unpack_from("<Q", raw, off + 8)[0]
    return present


def test_galois_index_is_seals_numbering(owner):
    steps = [1, -3, 64, 1000, -4000, PARAMS.slots - 1]
    raw = seeded.seeded_galois_keys(owner.he, steps, "none")
    assert _galois_indices(raw) == sorted(compact.galois_index(s, PARAMS.n) for s in steps)
    with pytest.raises(ValueError):
        compact.galois_index(PARAMS.slots, PARAMS.n)


def test_keys_trimmed_to_their_levels_rotate_exactly_there_and_nowhere_above(owner):
    """`used`: a key kept for ciphertexts of at most m data primes (level depth+1-m and below)."""
    raw = seeded.seeded_galois_keys(owner.he, STEPS, "none")
    full = compact.encode_kswitch_keys(raw, PARAMS.qi_sizes)
    pub = owner.public_bytes()
    x = _vec(8)
    data_primes = len(PARAMS.qi_sizes) - 1
    for m in (2, 3):
        enc = compact.encode_kswitch_keys(raw, PARAMS.qi_sizes, {compact.galois_index(s, PARAMS.n): m for s in STEPS})
        assert len(enc) < len(full) * (m * (m + 1)) / (data_primes * (data_primes + 1)) + 2 ** 17
        gw = Ckks.from_public_bytes(PARAMS, pub["context"], pub["public_key"], pub["relin_key"], enc, set(STEPS))
        assert gw.key_widths == {k: m for k in STEPS}
        for level in range(data_primes):
            ct = gw.encrypt(x, SCALE, level)
            if data_primes - level > m:
                with pytest.raises(KeyMaterialError, match=f"stored for ciphertexts of up to {m} primes"):
                    gw.rotate(ct, STEPS[0])
            gw.key_widths = {}                      # unchecked, to show what the check prevents
            err = max(float(np.max(np.abs(owner.decrypt(gw.rotate(ct, k)) - np.roll(x, -k)))) for k in STEPS)
            gw.key_widths = {k: m for k in STEPS}
            if data_primes - level <= m:
                assert err < 1e-4, (m, level)
            else:
                assert err > 1.0, (m, level)        # garbage, as documented: hence the gateway's check


def test_a_trimmed_relinearization_key_is_refused_above_its_width(owner):
    raw = seeded.seeded_relin_key(owner.he, "none")
    enc = compact.encode_kswitch_keys(raw, PARAMS.qi_sizes, {0: 2})
    pub = owner.public_bytes()
    gw = Ckks.from_public_bytes(PARAMS, pub["context"], pub["public_key"], enc, pub["rotation_keys"], set(STEPS))
    assert gw.key_widths["relin"] == 2
    x, y = _vec(9), _vec(10)
    for level, ok in ((0, False), (1, False), (2, True)):
        prod = gw.multiply_no_relin(gw.encrypt(x, SCALE, level), gw.encrypt(y, SCALE, level))
        if ok:
            gw.relinearize(prod)
            gw.rescale(prod)
            assert np.max(np.abs(owner.decrypt(prod) - x * y)) < 1e-3
        else:
            with pytest.raises(KeyMaterialError, match="relinearization is stored for ciphertexts of up to 2"):
                gw.relinearize(prod)


def test_ct_primes_is_the_primes_seal_serializes(owner):
    x = _vec(11)
    for level in range(len(PARAMS.qi_sizes) - 1):
        ct = owner.encrypt(x, SCALE, level)
        products = [owner.multiply_no_relin(ct, ct)] if level < 2 else []   # size 3 (scale 2^60 must fit)
        for c in [ct, *products]:
            assert owner.ct_primes(c) == compact.CT_FIELDS.unpack_from(c.to_bytes("none"), 16)[4] \
                == len(PARAMS.qi_sizes) - 1 - level
