"""CKKS parameter choice at 128-bit security, checked against the HomomorphicEncryption.org
standard (classical, ternary secret) and against SEAL's own table - never assumed."""
from __future__ import annotations

from dataclasses import dataclass, asdict

from protected_nn.errors import PlanError

# Largest log2(Q) (special prime included) for 128-bit classical security, ternary secret.
# HomomorphicEncryption.org security standard (2018), table 1; identical to SEAL's CoeffModulus::MaxBitCount.
HE_STANDARD_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

MIN_SCALE_BITS = 25      # below this CKKS precision drops under the 1e-2 target on deep plans
MAX_SCALE_BITS = 36      # above this the second prime (2*scale - final) would pass 45 bits
MAX_PRIME_BITS = 60      # SEAL's limit for one prime
SPECIAL_MARGIN_BITS = 8


@dataclass(frozen=True)
class CkksParams:
    n: int                   # ring dimension (slots = n/2)
    qi_sizes: tuple[int, ...]  # first prime, one prime per level, special prime last
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.n // 2

    @property
    def depth(self) -> int:
        return len(self.qi_sizes) - 2

    @property
    def log_q(self) -> int:
        return sum(self.qi_sizes)

    def security_bits_ok(self) -> bool:
        return self.log_q <= HE_STANDARD_128[self.n]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["qi_sizes"] = list(self.qi_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CkksParams":
        return cls(n=int(d["n"]), qi_sizes=tuple(int(q) for q in d["qi_sizes"]),
                   scale_bits=int(d["scale_bits"]))


def check_128_bit(params: CkksParams) -> None:
    """Raise PlanError unless the parameter set meets 128-bit security."""
    if params.n not in HE_STANDARD_128:
        raise PlanError(f"ring dimension {params.n} is not in the 128-bit table {sorted(HE_STANDARD_128)}")
    if any(q > MAX_PRIME_BITS or q < 17 for q in params.qi_sizes):
        raise PlanError(f"prime sizes {params.qi_sizes} outside SEAL's 17..60 bits")
    if not params.security_bits_ok():
        raise PlanError(f"log2(Q)={params.log_q} exceeds {HE_STANDARD_128[params.n]} bits allowed "
                        f"at N={params.n} for 128-bit security")


def choose_params(depth: int, slots_needed: int, output_bits: int,
                  min_scale_bits: int = MIN_SCALE_BITS, final_scale_bits: int | None = None) -> CkksParams:
    """Smallest ring dimension whose modulus fits `depth` rescales at >= min_scale_bits of
    precision, with a first prime holding outputs up to 2**output_bits, at 128-bit security.
    Among fitting scales the largest is taken (more precision for free). When the last layer
    is linear its weights can bring the result down to `final_scale_bits`, so the first prime
    (the only one a result keeps) shrinks, and with it the result message."""
    # The special prime bounds key-switching noise (about max q_i / special): give it a few bits
    # over the largest data prime when the budget allows, else fall back to equal size.
    for n in sorted(HE_STANDARD_128):
        if n // 2 < slots_needed:
            continue
        budget = HE_STANDARD_128[n]
        for margin in (SPECIAL_MARGIN_BITS, SPECIAL_MARGIN_BITS // 2, 0):
            for scale_bits in range(MAX_SCALE_BITS, min_scale_bits - 1, -1):
                levels = [scale_bits] * depth
                if final_scale_bits and depth:
                    # The last rescale drops prime 1: making it 2^(scale - final) larger brings the
                    # result down to 2^final while the last weights keep a full (low-noise) scale.
                    levels[0] = min(MAX_PRIME_BITS, 2 * scale_bits - final_scale_bits)
                first = min(MAX_PRIME_BITS, (final_scale_bits or scale_bits) + output_bits)
                special = min(MAX_PRIME_BITS, max([first] + levels) + margin)
                total = first + sum(levels) + special
                if total <= budget:
                    params = CkksParams(n=n, qi_sizes=(first, *levels, special), scale_bits=scale_bits)
                    check_128_bit(params)
                    return params
    raise PlanError(f"no 128-bit CKKS parameter set fits depth {depth} with {slots_needed} slots "
                    f"(largest N={max(HE_STANDARD_128)}): reduce the model's depth or width")
