"""Compact, lossless encoding of SEAL ciphertexts and keys for bundle members.

SEAL stores every coefficient in a 64-bit word although it is a residue below its prime q_i
(31..53 bits here); zstd recovers only part of the waste. This encoding keeps SEAL's
*uncompressed* serialization byte for byte, except that each row of coefficients (N words, all
residues modulo one prime) is bit-packed to bit_length(q_i) bits (ckks/bitpack.py). Headers and
the seed of a seeded object are kept verbatim. Decoding gives back exactly the compr_mode=none
bytes, which SEAL's ordinary load then checks (coefficients below their primes, sizes, seeds).

Layout, little-endian (version 1):
    b"FHEZ" u8 version | u32 row_words (N) | u8 n_classes, then per class: u8 bits, u32 rows
    | u16 n_trimmed, then per trimmed key: u32 key index, u8 width (see encode_kswitch_keys)
    | u32 n_items, then per item: u8 0, u32 length, bytes (verbatim); u8 1, u8 class, u32 rows;
      or u8 2, u32 rows (rows of zeros: key rows never used, see encode_kswitch_keys)
    | the classes' packed rows, class after class, each class's rows in output order.
Rows of one width are packed one after the other, so each run of rows (an item) unpacks with a
few numpy operations straight to its place in SEAL's bytes (ckks/bitpack.py).

One exception, the owner's choice: encode_kswitch_keys(used=...) stores the rows of evaluation
keys that a plan never reads as zeros (runtime/owner.py trim_key_rows); the widths travel in
the header and a gateway refuses to apply such a key above its width (Ckks.check_key_width).

Only the owner encodes (it knows the primes); `seal_bytes` decodes any member a gateway reads:
a compact encoding, or SEAL's own serialization as bundles made before it carry (kept: it costs
one prefix test).
"""
from __future__ import annotations

import struct

import numpy as np

from protected_nn.ckks import bitpack
from protected_nn.errors import BundleError

MAGIC = b"FHEZ"
VERSION = 1
SEAL_MAGIC = b"\x5e\xa1"          # SEALHeader's 0xA15E, little-endian
SEAL_HEADER = struct.Struct("<HBBBBHQ")   # magic, header size, version major/minor, compr_mode, reserved, size
CT_FIELDS = struct.Struct("<32sBQQQdQ")   # parms_id, is_ntt_form, size, N, coeff_modulus_size, scale, correction
CT_PREFIX = SEAL_HEADER.size + CT_FIELDS.size + SEAL_HEADER.size + 8   # up to the first coefficient (113)
MAX_DECODED = 1 << 30             # a member decodes to at most 1 GiB (bundles are <= 512 MB)
ROW_WORDS = (1024, 2048, 4096, 8192, 16384, 32768)
MIN_BITS, MAX_BITS = 17, 61       # SEAL's prime sizes


# --- owner side: encode ---------------------------------------------------------------------
class _Builder:
    def __init__(self, prime_bits):
        self.prime_bits = [int(b) for b in prime_bits]
        self.n = None
        self.items: list = []          # [bytearray] or [class_bits, rows] (bits 0: zero rows)
        self.rows: dict[int, list[np.ndarray]] = {}
        self.used: dict[int, int] = {}     # the widths of trimmed keys, stored for the gateway

    def verbatim(self, data) -> None:
        if self.items and isinstance(self.items[-1], bytearray):
            self.items[-1] += data
        else:
            self.items.append(bytearray(data))

    def coefficients(self, words: np.ndarray, n: int, k: int, kept=None) -> None:
        """Rows of n words; row r holds residues modulo prime r % k of the chain. Rows whose
        prime is not in `kept` (None: all are) are stored as zeros (width 0, no bytes)."""
        if self.n not in (None, n) or n not in ROW_WORDS or k > len(self.prime_bits) or words.size % n:
            raise ValueError(f"unexpected SEAL layout: N={n}, {k} primes, {words.size} words")
        for r, row in enumerate(words.reshape(-1, n)):
            bits = self.prime_bits[r % k] if kept is None or r % k in kept else 0
            if bits:
                self.rows.setdefault(bits, []).append(row)
            if self.items and isinstance(self.items[-1], list) and self.items[-1][0] == bits:
                self.items[-1][1] += 1
            else:
                self.items.append([bits, 1])
        self.n = n

    def ciphertext(self, raw: bytes, off: int, component: int = 0, used: int | None = None) -> int:
        """One serialized Ciphertext (also a PublicKey) at `off`; returns its end. `used`: see
        encode_kswitch_keys; `component` is this key's place in its key switching key."""
        magic, hsize, _, _, mode, _, size = SEAL_HEADER.unpack_from(raw, off)
        if magic != 0xA15E or hsize != SEAL_HEADER.size or mode != 0 or off + size > len(raw):
            raise ValueError("compact encoding needs SEAL objects serialized with compr_mode none")
        _, _, _, n, k, _, _ = CT_FIELDS.unpack_from(raw, off + SEAL_HEADER.size)
        (count,) = struct.unpack_from("<Q", raw, off + CT_PREFIX - 8)
        start = off + CT_PREFIX
        end = start + 8 * count
        if end > off + size:
            raise ValueError("SEAL ciphertext declares more coefficients than it holds")
        self.verbatim(raw[off:start])
        kept = None if used is None else set() if component >= used else {*range(used), k - 1}
        self.coefficients(np.frombuffer(raw, dtype="<u8", count=count, offset=start), n, k, kept)
        self.verbatim(raw[end:off + size])          # a seeded object's seed
        return off + size

    def kswitch_keys(self, raw: bytes, used: dict[int, int]) -> None:
        """SEAL KSwitchKeys (relinearization or Galois keys): parms_id, then a vector of
        vectors of PublicKey."""
        magic, hsize, _, _, mode, _, size = SEAL_HEADER.unpack_from(raw, 0)
        if magic != 0xA15E or mode != 0 or size != len(raw):
            raise ValueError("compact encoding needs SEAL objects serialized with compr_mode none")
        off = SEAL_HEADER.size + 32
        (dim1,) = struct.unpack_from("<Q", raw, off)
        self.verbatim(raw[:off + 8])
        off += 8
        for i in range(dim1):
            (dim2,) = struct.unpack_from("<Q", raw, off)
            self.verbatim(raw[off:off + 8])
            off += 8
            for j in range(dim2):
                off = self.ciphertext(raw, off, j, used.get(i))
        if off != len(raw):
            raise ValueError("trailing bytes after the SEAL key set")

    def to_bytes(self) -> bytes:
        classes = sorted(self.rows)
        index = {b: i for i, b in enumerate(classes)}
        head = [MAGIC, struct.pack("<BIB", VERSION, self.n or ROW_WORDS[0], len(classes))]
        head += [struct.pack("<BI", b, len(self.rows[b])) for b in classes]
        head.append(struct.pack("<H", len(self.used)))
        head += [struct.pack("<IB", i, m) for i, m in sorted(self.used.items())]
        head.append(struct.pack("<I", len(self.items)))
        for item in self.items:
            if isinstance(item, bytearray):
                head += [struct.pack("<BI", 0, len(item)), bytes(item)]
            elif item[0] == 0:
                head.append(struct.pack("<BI", 2, item[1]))
            else:
                head.append(struct.pack("<BBI", 1, index[item[0]], item[1]))
        body = [bitpack.pack(np.concatenate(self.rows[b]), b) for b in classes]
        return b"".join(head + body)


def encode_ciphertext(raw: bytes, prime_bits) -> bytes:
    """A SEAL ciphertext or public key (compr_mode none, seeded or not). `prime_bits`: bit
    sizes of the key-level chain (data primes, then the special prime). ValueError if a
    coefficient does not fit its prime's width (nothing is ever dropped)."""
    b = _Builder(prime_bits)
    if b.ciphertext(raw, 0) != len(raw):
        raise ValueError("trailing bytes after the SEAL ciphertext")
    return b.to_bytes()


def encode_kswitch_keys(raw: bytes, prime_bits, used: dict[int, int] | None = None) -> bytes:
    """SEAL relinearization or Galois keys (compr_mode none, seeded or not).

    used: {key index: m} for keys only ever applied to ciphertexts of at most m data primes
    (key index: 0 for the relinearization key, galois_index(step, n) for a rotation). SEAL's
    key switching then reads only components 0..m-1 and, in each, the rows of primes 0..m-1 and
    of the special prime; the others are stored as zeros, and `used` is stored with them. Not
    lossless: such a key applied to a ciphertext of more primes would give garbage, so the
    gateway refuses that (context.Ckks.check_key_width). Keys not in `used` are kept whole."""
    b = _Builder(prime_bits)
    b.used = {int(i): int(m) for i, m in (used or {}).items()}
    b.kswitch_keys(raw, b.used)
    return b.to_bytes()


def galois_index(step: int, n: int) -> int:
    """The place of rotation `step`'s key in SEAL's Galois keys, as SEAL's GaloisTool numbers
    it: element 3^step mod 2n (a right rotation: 3^(n/2 - |step|)), index (element - 1) / 2."""
    slots = n // 2
    if not 0 < abs(step) < slots:
        raise ValueError(f"rotation step {step} outside 1..{slots - 1} in magnitude")
    elt = pow(3, step if step > 0 else slots + step, 2 * n)
    return (elt - 1) >> 1


# --- gateway side: decode -------------------------------------------------------------------
class _Reader:
    def __init__(self, data, what: str):
        self.view, self.off, self.what = memoryview(data), 0, what

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.off + size > len(self.view):
            raise BundleError(f"{self.what}: compact encoding truncated at byte {self.off}")
        values = struct.unpack_from(fmt, self.view, self.off)
        self.off += size
        return values

    def bytes(self, n: int) -> memoryview:
        if self.off + n > len(self.view):
            raise BundleError(f"{self.what}: compact encoding declares {n} bytes at byte {self.off}, "
                              f"{len(self.view) - self.off} left")
        out = self.view[self.off:self.off + n]
        self.off += n
        return out


def _header(data, what: str):
    """Reader after the header, row words, classes [(bits, rows)], trimmed widths {index: m}."""
    r = _Reader(data, what)
    if bytes(r.bytes(len(MAGIC))) != MAGIC:
        raise BundleError(f"{what}: not a compact encoding (bad magic)")
    (version,) = r.take("<B")
    if version != VERSION:
        raise BundleError(f"{what}: compact encoding version {version} is not known to this "
                          f"software (it reads version {VERSION}); update it or export the bundle again")
    n, n_classes = r.take("<IB")
    if n not in ROW_WORDS:
        raise BundleError(f"{what}: compact encoding declares rows of {n} words")
    classes = [r.take("<BI") for _ in range(n_classes)]
    if any(not MIN_BITS <= bits <= MAX_BITS for bits, _ in classes):
        raise BundleError(f"{what}: compact encoding declares a width outside {MIN_BITS}..{MAX_BITS} bits")
    (n_used,) = r.take("<H")
    used = dict(r.take("<IB") for _ in range(n_used))
    return r, n, classes, used


def key_widths(data, what: str) -> dict[int, int]:
    """{key index: m} of the keys a compact member stores trimmed to ciphertexts of at most m
    primes (encode_kswitch_keys' `used`); {} for SEAL's own bytes or an empty member."""
    if len(data) == 0 or bytes(data[:len(MAGIC)]) != MAGIC:
        return {}
    return _header(data, what)[3]


def decode(data, what: str, max_size: int = MAX_DECODED) -> bytes:
    """SEAL's uncompressed bytes from a compact encoding. BundleError naming `what` (the member)
    on anything malformed: every size is checked against the data before it is used."""
    r, n, classes, _ = _header(data, what)
    n_classes = len(classes)
    (n_items,) = r.take("<I")
    pieces, runs, zeros, placed = [], [], [], [0] * n_classes
    total = 0
    for _ in range(n_items):
        (tag,) = r.take("<B")
        if tag == 0:
            (length,) = r.take("<I")
            pieces.append((total, r.bytes(length)))
            total += length
        elif tag == 2:         # rows stored as zeros (see encode_kswitch_keys' `used`)
            (rows,) = r.take("<I")
            zeros.append((total, rows * 8 * n))
            total += rows * 8 * n
        elif tag == 1:
            c, rows = r.take("<BI")
            if c >= n_classes or placed[c] + rows > classes[c][1]:
                raise BundleError(f"{what}: compact encoding refers to more rows than its classes hold")
            runs.append((total, c, placed[c], rows))
            placed[c] += rows
            total += rows * 8 * n
        else:
            raise BundleError(f"{what}: compact encoding has an item of unknown kind {tag}")
        if total > max_size:
            raise BundleError(f"{what}: compact encoding decodes to more than {max_size} bytes")
    if placed != [rows for _, rows in classes]:
        raise BundleError(f"{what}: compact encoding declares rows that no item places")
    payloads = [r.bytes(bitpack.packed_size(rows * n, bits)) for bits, rows in classes]
    if r.off != len(r.view):
        raise BundleError(f"{what}: {len(r.view) - r.off} trailing bytes after the compact encoding")
    out = np.empty(total, dtype=np.uint8)
    for at, chunk in pieces:
        out[at:at + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
    for at, size in zeros:
        out[at:at + size] = 0
    for at, c, first, rows in runs:
        # Rows are n words, n a multiple of 8: each row's packing starts on a byte boundary.
        row_bytes = n * classes[c][0] // 8
        dst = np.ndarray((rows * n,), dtype="<u8", buffer=out, offset=at)   # unaligned: fine
        bitpack.unpack_into(payloads[c][first * row_bytes:(first + rows) * row_bytes], classes[c][0], dst)
    return out.tobytes()


def seal_bytes(data, what: str, max_size: int = MAX_DECODED) -> bytes:
    """The bytes SEAL loads for a ciphertext or key member: decoded if compact, as is if it is
    SEAL's own serialization (bundles made before the compact encoding), b"" if empty."""
    if len(data) == 0:
        return b""
    head = bytes(data[:len(MAGIC)])
    if head == MAGIC:
        return decode(data, what, max_size)
    if head[:2] == SEAL_MAGIC:
        return data if isinstance(data, bytes) else bytes(data)
    raise BundleError(f"{what}: neither a compact encoding nor a SEAL object (starts {head.hex()})")
