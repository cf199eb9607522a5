"""The one place that imports Pyfhel. A thin wrapper that guards Pyfhel 3.5.0's traps, each of
which gives silent garbage or a crash instead of an error:

- rotate/relinearize on a key set without that key silently *generates* a garbage key: we keep
  the set of rotation steps ourselves and raise before calling Pyfhel, and at load time check
  that SEAL's key set holds every one of them (seeded.missing_rotation_steps);
- decrypt on an object without a secret key segfaults: only `SecretCkks` has `decrypt`;
- encryptFrac mis-reads strided arrays: we always pass contiguous float64;
- contextGen does not raise on insecure parameters: we check its status and our own table;
- mod_level is a Python-side counter reset by from_bytes: levels are tracked by the plan.
"""
from __future__ import annotations

import warnings

import numpy as np
from Pyfhel import Pyfhel, PyCtxt, PyPtxt

from protected_nn.ckks import bitpack, compact, seeded
from protected_nn.ckks.params import CkksParams, check_128_bit
from protected_nn.errors import BundleError, KeyMaterialError, PlanError, ResultError

COMPRESSION = "zstd"   # Pyfhel silently treats an unknown name as "none": keep it a constant
SEAL_CT_PREFIX = compact.CT_PREFIX   # SEAL 4.1 uncompressed ciphertext: bytes before the coefficients (113)
PACKED_MAGIC = b"FHR1"


def normalize_step(k: int, slots: int) -> int:
    """Rotation amounts are taken mod `slots`; SEAL wants |step| < slots: use the shorter way."""
    k %= slots
    return k - slots if k > slots // 2 else k


def primes_of(params: CkksParams) -> list[int]:
    """The exact primes SEAL picks for these sizes (deterministic): the plan's scale
    bookkeeping divides by them. A context loaded from bytes does not expose them."""
    return [int(q) for q in Ckks.new_context(params).get_qi()]


class Ckks:
    """Public-key side: encrypt, evaluate, serialize. Holds no secret key and cannot decrypt."""

    def __init__(self, he: Pyfhel, params: CkksParams, rotation_steps: set[int]):
        self.he = he
        self.params = params
        self.slots = params.slots
        self.rotation_steps = {normalize_step(k, self.slots) for k in rotation_steps}
        # the fused products and hoisted rotations of the project's Pyfhel patch 0002 (a plain
        # Pyfhel 3.5.0 lacks them: SEAL's operations one by one instead; False compares the two)
        self.fused = hasattr(he, "dot_no_relin") and hasattr(he, "rotate_hoisted")
        self.key_bytes_released = 0     # Galois-key memory no rotation of the plan reads (from_public_bytes)
        self.key_widths: dict = {}   # {step or "relin": m}: keys stored for ciphertexts of <= m primes

    # --- construction -------------------------------------------------------------------
    @staticmethod
    def new_context(params: CkksParams) -> Pyfhel:
        check_128_bit(params)
        he = Pyfhel()
        with warnings.catch_warnings():
            # Pyfhel warns when prime sizes differ from the scale; ours differ on purpose
            # (first and second primes, see params.choose_params) and scales are tracked exactly.
            warnings.filterwarnings("ignore", message=".*do not support rescaling.*")
            status = he.contextGen(scheme="ckks", n=params.n, scale=2.0 ** params.scale_bits,
                                   qi_sizes=list(params.qi_sizes), sec=128)
        if "success" not in str(status):
            raise PlanError(f"SEAL refused the CKKS parameters {params.to_dict()}: {status}")
        return he

    @classmethod
    def from_public_bytes(cls, params: CkksParams, context: bytes, public_key: bytes,
                          relin_key: bytes, rotation_keys: bytes, rotation_steps: set[int]) -> "Ckks":
        """Galois keys stored trimmed (their width in the member, ckks/compact.py) also give
        back the memory of the parts no rotation reads (patch 0002: madvise; LeNet-5: about
        half of its keys' memory)."""
        check_128_bit(params)
        he = Pyfhel()
        he.from_bytes_context(context)
        if he.get_poly_modulus_degree() != params.n or he.total_coeff_modulus_bit_count != params.log_q - params.qi_sizes[-1]:
            raise KeyMaterialError("the CKKS context does not match the plan's parameters")
        load_key_members(he, public_key, relin_key, rotation_keys)
        ckks = cls(he, params, rotation_steps)
        ckks.key_widths = key_member_widths(params.n, ckks.rotation_steps, relin_key, rotation_keys)
        missing = seeded.missing_rotation_steps(he, ckks.rotation_steps - {0})
        if missing:
            raise KeyMaterialError(f"the rotation keys lack the Galois keys for steps {missing} that the "
                            f"plan uses")
        trimmed = {k: m for k, m in ckks.key_widths.items() if k != "relin"}
        if trimmed and hasattr(he, "release_rotate_key_parts"):
            ckks.key_bytes_released = he.release_rotate_key_parts(list(trimmed), list(trimmed.values()))
        return ckks

    # --- encryption and plaintexts --------------------------------------------------------
    def encrypt(self, values: np.ndarray, scale: float, level: int = 0) -> PyCtxt:
        vec = np.ascontiguousarray(values, dtype=np.float64)
        if vec.shape != (self.slots,):
            raise ValueError(f"expected {self.slots} slot values, got shape {vec.shape}")
        ct = self.he.encryptFrac(vec, scale=scale)
        for _ in range(level):
            self.he.mod_switch_to_next(ct)
        return ct

    def encode(self, values: np.ndarray, scale: float, level: int) -> PyPtxt:
        vec = np.ascontiguousarray(values, dtype=np.float64)
        pt = self.he.encodeFrac(vec, scale=scale)
        for _ in range(level):
            self.he.mod_switch_to_next(pt)
        return pt

    # --- evaluation ------------------------------------------------------------------------
    def multiply_no_relin(self, a: PyCtxt, b: PyCtxt) -> PyCtxt:
        return self.he.multiply(a, b, True)

    def multiply_plain(self, a: PyCtxt, p: PyPtxt) -> PyCtxt:
        return self.he.multiply_plain(a, p, True)

    def add_inplace(self, acc: PyCtxt, other: PyCtxt) -> None:
        self.he.add(acc, other)

    def add_plain_inplace(self, acc: PyCtxt, p: PyPtxt) -> None:
        self.he.add_plain(acc, p)

    def relinearize(self, ct: PyCtxt) -> None:
        if self.he.is_relin_key_empty():
            raise KeyMaterialError("no relinearization key loaded")
        self.check_key_width("relin", ct)
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # a generated key would be garbage: fail instead
            self.he.relinearize(ct)

    def rescale(self, ct: PyCtxt) -> None:
        self.he.rescale_to_next(ct)

    def mod_switch(self, ct: PyCtxt, times: int) -> None:
        for _ in range(times):
            self.he.mod_switch_to_next(ct)

    def rotate(self, ct: PyCtxt, k: int) -> PyCtxt:
        """New ciphertext with slot i holding slot i+k of `ct` (cyclic)."""
        step = normalize_step(k, self.slots)
        if step == 0:
            return self.copy(ct)
        if step not in self.rotation_steps or self.he.is_rotate_key_empty():
            raise KeyMaterialError(f"no Galois key for rotation step {step}: the key set covers "
                            f"{sorted(self.rotation_steps)}")
        self.check_key_width(step, ct)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return self.he.rotate(ct, step, True)

    def copy(self, ct: PyCtxt) -> PyCtxt:
        return PyCtxt(copy_ctxt=ct)

    # --- fused operations (scripts/pyfhel/0002: exact rewrites of SEAL's own arithmetic) -----
    def dot(self, xs: list, ws: list) -> PyCtxt:
        """sum_t xs[t] * ws[t] for ciphertexts `ws` and ciphertexts or plaintexts `xs` (all of
        one kind, one level). Ciphertext pairs give a size-3 sum, not relinearized. With the
        patch: one pass, 128-bit accumulation, one reduction - the same residues as SEAL's
        multiply and add, ~4x faster; without it (`fused` False): SEAL's multiply and add."""
        plain = isinstance(xs[0], PyPtxt)
        if any(isinstance(x, PyPtxt) != plain for x in xs):
            raise ValueError("dot: mixed plaintext and ciphertext operands")
        if self.fused:
            return self.he.dot_plain(list(ws), list(xs)) if plain else self.he.dot_no_relin(list(xs), list(ws))
        acc = None
        for x, w in zip(xs, ws):
            prod = self.multiply_plain(w, x) if plain else self.multiply_no_relin(x, w)
            acc = prod if acc is None else (self.add_inplace(acc, prod) or acc)
        return acc

    def rotate_many(self, ct: PyCtxt, steps: list[int]) -> list[PyCtxt]:
        """[rotate(ct, k) for k in steps], the key switches sharing one decomposition of ct
        (hoisted; each step needs its own Galois key, as for rotate). A single step, or no
        patch: SEAL's rotation per step."""
        norm = [normalize_step(k, self.slots) for k in steps]
        if not (self.fused and sum(1 for k in norm if k) > 1):
            return [self.rotate(ct, k) for k in norm]
        for k in norm:
            if k and (k not in self.rotation_steps or self.he.is_rotate_key_empty()):
                raise KeyMaterialError(f"no Galois key for rotation step {k}: the key set covers "
                                       f"{sorted(self.rotation_steps)}")
        nonzero = list(dict.fromkeys(k for k in norm if k))
        for k in nonzero:
            self.check_key_width(k, ct)
        done = dict(zip(nonzero, self.he.rotate_hoisted(ct, nonzero)))
        return [done[k] if k else self.copy(ct) for k in norm]

    def check_key_width(self, key, ct: PyCtxt) -> None:
        """A key stored trimmed (compact.encode_kswitch_keys' `used`) applied to a wider
        ciphertext would give garbage: refuse. Costs a size query, no serialization."""
        width = self.key_widths.get(key)
        if width is None:
            return
        primes = self.ct_primes(ct)
        if primes > width:
            what = "relinearization" if key == "relin" else f"rotation step {key}"
            raise KeyMaterialError(f"the bundle's key for {what} is stored for ciphertexts of up to {width} "
                                   f"primes, this one has {primes}: it is applied above the lowest level the "
                                   f"plan rotates at (protect the model again, or with trim_keys=False)")

    def ct_primes(self, ct: PyCtxt) -> int:
        """The primes `ct` keeps, from SEAL's size of its uncompressed form (Pyfhel's mod_level
        is a Python-side counter that from_bytes resets): no serialization."""
        return (ct.sizeof_ciphertext() - SEAL_CT_PREFIX) // (8 * ct.size() * self.params.n)

    # --- serialization --------------------------------------------------------------------
    def ct_to_bytes(self, ct: PyCtxt) -> bytes:
        return ct.to_bytes(COMPRESSION)

    def ct_to_packed_bytes(self, ct: PyCtxt, bits: int) -> bytes:
        """A result at the last level: SEAL's uncompressed form with its coefficients (all below
        the first prime) bit-packed to `bits` bits - about 40% smaller than zstd."""
        raw = ct.to_bytes("none")
        try:
            packed = bitpack.pack(np.frombuffer(raw[SEAL_CT_PREFIX:], dtype="<u8"), bits)
        except ValueError:
            raise ValueError("ciphertext is not at the last level: coefficients exceed the first prime") from None
        return PACKED_MAGIC + bytes([bits]) + raw[:SEAL_CT_PREFIX] + packed

    def ct_from_packed_bytes(self, data: bytes, max_words: int) -> PyCtxt:
        return self.ct_from_bytes(self.unpack_result(data, max_words))

    @staticmethod
    def unpack_result(data: bytes, max_words: int) -> bytes:
        """The SEAL bytes (header + 64-bit coefficients) of a packed result, checked only for its
        framing: protected_nn/runtime/result_checks.py checks the header before SEAL loads it."""
        head = len(PACKED_MAGIC) + 1 + SEAL_CT_PREFIX
        if len(data) < head or not data.startswith(PACKED_MAGIC):
            raise ResultError("result is not a packed ciphertext (bad magic or truncated)")
        bits = data[len(PACKED_MAGIC)]
        if not 17 <= bits <= 60:
            raise ResultError(f"result declares {bits}-bit coefficients")
        body = data[head:]
        n_words = len(body) * 8 // bits
        if n_words == 0 or n_words > max_words or len(body) != (n_words * bits + 7) // 8:
            raise ResultError(f"result body of {len(body)} bytes does not hold whole {bits}-bit coefficients")
        words = bitpack.unpack(body, bits, n_words)
        return data[len(PACKED_MAGIC) + 1:head] + words.astype("<u8").tobytes()

    def ct_from_bytes(self, data: bytes) -> PyCtxt:
        ct = PyCtxt(pyfhel=self.he)
        try:
            ct.from_bytes(bytes(data), "float")
        except Exception as exc:  # SEAL raises RuntimeError/ValueError on malformed input
            raise ResultError(f"not a ciphertext of this model's CKKS context: {exc}") from None
        return ct


class SecretCkks(Ckks):
    """Owner side: generates the key pair and decrypts. Never constructed on a gateway."""

    def __init__(self, he: Pyfhel, params: CkksParams, rotation_steps: set[int]):
        super().__init__(he, params, rotation_steps)
        if he.is_secret_key_empty():
            raise KeyMaterialError("SecretCkks needs a secret key")

    @classmethod
    def generate(cls, params: CkksParams, rotation_steps: set[int],
                 evaluation_keys: bool = True) -> "SecretCkks":
        """evaluation_keys=False: no relinearization/Galois keys in memory (the owner does not
        evaluate; public_bytes(seeded_keys=True) makes fresh seeded ones for the bundle)."""
        he = cls.new_context(params)
        he.keyGen()
        slots = params.slots
        steps = sorted({normalize_step(k, slots) for k in rotation_steps} - {0})
        if evaluation_keys:
            he.relinKeyGen()
            if steps:
                he.rotateKeyGen(rot_steps=steps)
        return cls(he, params, set(steps))

    @classmethod
    def from_bytes(cls, params: CkksParams, context: bytes, public_key: bytes, secret_key: bytes,
                   relin_key: bytes = b"", rotation_keys: bytes = b"", rotation_steps=()) -> "SecretCkks":
        he = Pyfhel()
        he.from_bytes_context(context)
        he.from_bytes_secret_key(secret_key)
        load_key_members(he, public_key, relin_key, rotation_keys)
        return cls(he, params, set(rotation_steps))

    def public_bytes(self, seeded_keys: bool = True) -> dict[str, bytes]:
        """The bundle's context and key members, keys in the compact encoding (ckks/compact.py).
        seeded_keys: fresh public/relinearization/Galois keys in SEAL's seeded form (about
        half the bytes; needs the patched Pyfhel, see ckks/seeded.py), else the keys in memory."""
        bits = self.params.qi_sizes     # SEAL's primes have exactly these sizes (encode checks it)
        if seeded_keys:
            steps = sorted(self.rotation_steps - {0})
            pk, relin = seeded.seeded_public_key(self.he, "none"), seeded.seeded_relin_key(self.he, "none")
            rot = seeded.seeded_galois_keys(self.he, steps, "none") if steps else b""
        else:
            pk, relin = self.he.to_bytes_public_key("none"), self.he.to_bytes_relin_key("none")
            rot = self.he.to_bytes_rotate_key("none") if self.rotation_steps else b""
        return {
            "context": self.he.to_bytes_context(COMPRESSION),
            "public_key": compact.encode_ciphertext(pk, bits),
            "relin_key": compact.encode_kswitch_keys(relin, bits),
            "rotation_keys": compact.encode_kswitch_keys(rot, bits) if rot else b"",
        }

    def encrypt_to_bytes(self, values: np.ndarray, scale: float, level: int = 0,
                         seeded_ct: bool = True) -> bytes:
        """A serialized ciphertext at `level`: seeded symmetric-key encryption (half the bytes,
        needs the patched Pyfhel) or public-key encryption then mod-switching."""
        if seeded_ct:
            return seeded.encrypt_symmetric_seeded(self.he, values, scale, level, COMPRESSION)
        return self.ct_to_bytes(self.encrypt(values, scale, level))

    def encrypt_to_compact(self, values: np.ndarray, scale: float, level: int = 0,
                           seeded_ct: bool = True) -> bytes:
        """As encrypt_to_bytes, in the compact encoding of the bundle's params (ckks/compact.py)."""
        if seeded_ct:
            raw = seeded.encrypt_symmetric_seeded(self.he, values, scale, level, "none")
        else:
            raw = self.encrypt(values, scale, level).to_bytes("none")
        return compact.encode_ciphertext(raw, self.params.qi_sizes)

    def secret_bytes(self) -> bytes:
        return self.he.to_bytes_secret_key(COMPRESSION)

    def decrypt(self, ct: PyCtxt) -> np.ndarray:
        return np.asarray(self.he.decryptFrac(ct), dtype=np.float64)


def load_key_members(he: Pyfhel, public_key, relin_key, rotation_keys) -> None:
    """Loads the key members of a bundle into `he`: compact encodings or SEAL's own bytes (older
    bundles). BundleError naming the member if one does not decode or SEAL refuses it."""
    # The patched Pyfhel reads large keys in place (from_buffer_*); its from_bytes_* would copy
    # them into a stream first, doubling the keys' bytes at the worker's loading peak.
    relin_load = getattr(he, "from_buffer_relin_key", he.from_bytes_relin_key)
    rotate_load = getattr(he, "from_buffer_rotate_key", he.from_bytes_rotate_key)
    for name, data, load in (("public_key", public_key, he.from_bytes_public_key),
                             ("relin_key", relin_key, relin_load),
                             ("rotation_keys", rotation_keys, rotate_load)):
        raw = compact.seal_bytes(data, f"bundle member {name}")
        if not raw and name != "public_key":
            continue
        try:
            load(raw)
        except Exception as exc:   # SEAL raises RuntimeError/ValueError on malformed input
            raise BundleError(f"bundle member {name}: SEAL refuses it: {exc}") from None


def key_member_widths(n: int, steps, relin_key, rotation_keys) -> dict:
    """{step or "relin": m} of the keys the members store trimmed (ckks/compact.py)."""
    rot = compact.key_widths(rotation_keys, "bundle member rotation_keys")
    widths = {k: rot[compact.galois_index(k, n)] for k in steps if k and compact.galois_index(k, n) in rot}
    relin = compact.key_widths(relin_key, "bundle member relin_key")
    if 0 in relin:
        widths["relin"] = relin[0]
    return widths
