"""Malformed and adversarial inference messages for the backend (tests/security/test_adversarial.py,
bench/bench_faults.py): `AdversarialCorpus`, a deterministic mix of hostile messages (plus issue 15's
forgeries, tests/support/forged_messages.py) around valid, signed encrypted results of a quiet
scene from a real protected model; publishing a campaign; the verdict each kind predicts."""
from __future__ import annotations

import hashlib
import os
import random
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protected_nn import envelope
from protected_nn.runtime.result_checks import REASONS as RESULT_REASONS
from tests.support.backend_process import MAX_BYTES, BackendProcess
from tests.support.forged_messages import FORGERY_KINDS, ForgedMessages
from tests.support.gateway_keys import key_for

MODEL = "crowd-adv"
GATEWAY = "gw-1"
VALID_CAMERA = "cam-valid"
QUIET = (3.0, -4.0)        # count 3 (threshold 10), incident logit -4 (p 0.02): no rule fires


# ----------------------------------------------------------------------------- the model
def protected_store(root: Path):
    """A tiny real model (y = [30 x0, 10 x1 - 5]) protected into root/store; returns
    (fingerprint, quiet payload, a payload under ANOTHER key of the same model, its fingerprint,
    the secret key, the plan - public: in every bundle)."""
    from backend_decryptor.store import Store
    from protected_nn import api
    from tests.support.tiny_models import crowd_model
    onnx_path = root / "tiny.onnx"
    crowd_model(onnx_path)
    prot = api.protect(onnx_path)
    Store(root / "store").add_model(MODEL, prot, hashlib.sha256(onnx_path.read_bytes()).hexdigest())
    x = np.array([[QUIET[0] / 30.0, (QUIET[1] + 5.0) / 10.0, 0, 0]], np.float32)
    other = api.protect(onnx_path)                     # same model, another key pair (not stored)
    return (prot.artifacts.key_fingerprint, api.EdgeModel(prot.artifacts).infer(x),
            api.EdgeModel(other.artifacts).infer(x), other.artifacts.key_fingerprint, prot.secret_key,
            prot.artifacts.plan_json())


# ----------------------------------------------------------------------------- the corpus
REJECTED_ANYHOW = "rejected"   # a kind whose exact reason depends on the random bytes


@dataclass
class Message:
    kind: str
    topic: str
    data: bytes
    reasons: frozenset[str]    # the acceptable rejection reasons; empty = must be processed
    sequence: int | None = None


class AdversarialCorpus(ForgedMessages):
    """Deterministic (seeded) hostile messages around real ciphertexts."""

    KINDS = ("random_bytes", "magic_then_garbage", "truncated_envelope", "header_bitflip", "wrong_version",
             "huge_field_length", "huge_payload_length", "trailing_bytes", "bad_id_chars", "nan_time",
             "ciphertext_bitflip", "ciphertext_truncated", "ciphertext_random", "ciphertext_empty",
             "other_key_claiming_ours", "other_key_own_fingerprint", "unknown_model", "oversized",
             "replayed", "topic_mismatch", "gateway_not_allowed", "clock_skew") + FORGERY_KINDS

    def __init__(self, fp: str, payload: bytes, other_payload: bytes, other_fp: str, plan: dict, seed: int = 6):
        self.fp, self.payload, self.other_payload, self.other_fp = fp, payload, other_payload, other_fp
        self.plan = plan
        self.rng = random.Random(seed)
        self.next_bad_seq = 1_000_000
        self.valid_sent: list[Message] = []

    def valid(self, seq: int) -> Message:
        m = self._env("valid", self.payload, seq=seq, camera=VALID_CAMERA, reasons=())
        self.valid_sent.append(m)
        return m

    def _env(self, kind, payload, *, seq=None, camera=None, gateway=GATEWAY, model=MODEL, fp=None,
             t=None, topic_gateway=None, reasons=(), signer=None) -> Message:
        """Signed by `gateway`'s key unless `signer` is given (False: unsigned)."""
        if seq is None:
            seq, self.next_bad_seq = self.next_bad_seq, self.next_bad_seq + 1
        camera = camera or f"cam-{kind.replace('_', '-')}"
        env = envelope.Envelope(model, fp or self.fp, gateway, camera, seq, time.time() if t is None else t, payload)
        key = key_for(gateway) if signer is None else (signer or None)
        return Message(kind, f"fhe-edge/infer/{topic_gateway or gateway}/{camera}", envelope.encode(env, key),
                       frozenset(reasons), seq)

    def bad(self, i: int) -> Message:
        kind = self.KINDS[i % len(self.KINDS)]
        return getattr(self, "_" + kind)(kind)

    def _raw(self, kind, data: bytes, reasons) -> Message:
        return Message(kind, f"fhe-edge/infer/{GATEWAY}/cam-{kind.replace('_', '-')}", data, frozenset(reasons))

    def _flip(self, data: bytes, lo: int, hi: int) -> bytes:
        return self._flip_at(data, self.rng.randrange(lo, hi))

    # -- envelope level
    def _random_bytes(self, kind):
        data = bytes([self.rng.choice(b"ABCDEGHIJ\x00\xff")]) + self.rng.randbytes(self.rng.randrange(0, 4096))
        return self._raw(kind, data, {"bad_magic"})

    def _magic_then_garbage(self, kind):
        data = envelope.MAGIC + bytes([envelope.VERSION]) + self.rng.randbytes(self.rng.randrange(0, 2048))
        return self._raw(kind, data, {"bad_field", "out_of_range", "truncated", "length_mismatch", "trailing_bytes"})

    def _truncated_envelope(self, kind):
        good = self._env(kind, self.payload).data
        return self._raw(kind, good[:self.rng.randrange(1, len(good))], {"truncated", "length_mismatch"})

    def _header_bitflip(self, kind):
        m = self._env(kind, self.payload)
        # magic, version, or one of the four id length bytes: every such flip must be refused
        starts, pos = [0, 1, 2, 3, 4], 5
        for _ in range(4):
            starts.append(pos)
            pos += 1 + m.data[pos]
        m.data = self._flip_at(m.data, self.rng.choice(starts))
        m.reasons = frozenset({REJECTED_ANYHOW})
        return m

    def _flip_at(self, data: bytes, index: int) -> bytes:
        b = bytearray(data)
        b[index] ^= 1 << self.rng.randrange(8)
        return bytes(b)

    def _wrong_version(self, kind):
        m = self._env(kind, self.payload)
        m.data = m.data[:4] + bytes([self.rng.choice([0, 1, 4, 127, 255])]) + m.data[5:]
        m.reasons = frozenset({"bad_version"})
        return m

    def _huge_field_length(self, kind):
        m = self._env(kind, self.payload)
        m.data = m.data[:5] + bytes([self.rng.choice([0, 65, 200, 255])]) + m.data[6:]
        m.reasons = frozenset({"bad_field"})
        return m

    def _huge_payload_length(self, kind):
        m = self._env(kind, self.payload)
        at = len(m.data) - 64 - len(self.payload) - 4      # before the payload and the signature
        declared = self.rng.choice([0xFFFFFFFF, 0x7FFFFFFF, len(self.payload) + 1, MAX_BYTES * 8])
        m.data = m.data[:at] + struct.pack(">I", declared) + m.data[at + 4:]
        m.reasons = frozenset({"length_mismatch"})
        return m

    def _trailing_bytes(self, kind):
        m = self._env(kind, self.payload)
        m.data += self.rng.randbytes(self.rng.randrange(1, 64))
        m.reasons = frozenset({"trailing_bytes"})
        return m

    def _bad_id_chars(self, kind):
        m = self._env(kind, self.payload)
        m.data = m.data[:6] + bytes([self.rng.choice(b"/+#\x00 \xff")]) + m.data[7:]   # first char of the model id
        m.reasons = frozenset({"bad_field"})
        return m

    def _nan_time(self, kind):
        m = self._env(kind, self.payload)
        at = len(m.data) - 64 - len(self.payload) - 12
        m.data = m.data[:at] + struct.pack(">d", self.rng.choice([float("nan"), float("inf"), -float("inf")])) \
            + m.data[at + 8:]
        m.reasons = frozenset({"bad_field"})
        return m

    # -- ciphertext level (the envelope is well formed, the sequence fresh)
    def _ciphertext_bitflip(self, kind):
        # a flip in the SEAL header may be caught by the decoder's own checks (result_*)
        return self._env(kind, self._flip(self.payload, 0, len(self.payload)),
                         reasons={"decrypt_failed", *RESULT_REASONS})

    def _ciphertext_truncated(self, kind):
        return self._env(kind, self.payload[:self.rng.randrange(1, len(self.payload))], reasons={"decrypt_failed"})

    def _ciphertext_random(self, kind):
        return self._env(kind, self.rng.randbytes(len(self.payload)), reasons={"decrypt_failed"})

    def _ciphertext_empty(self, kind):
        return self._env(kind, b"", reasons={"decrypt_failed"})

    def _other_key_claiming_ours(self, kind):
        return self._env(kind, self.other_payload, reasons={"decrypt_failed"})

    def _other_key_own_fingerprint(self, kind):
        return self._env(kind, self.other_payload, fp=self.other_fp, reasons={"unknown_key"})

    def _unknown_model(self, kind):
        return self._env(kind, self.payload, model="no-such-model", reasons={"unknown_model"})

    def _oversized(self, kind):
        return self._env(kind, self.rng.randbytes(MAX_BYTES), reasons={"too_large"})

    def _replayed(self, kind):
        if not self.valid_sent:
            return self._unknown_model("unknown_model")
        old = self.rng.choice(self.valid_sent)
        return Message(kind, old.topic, old.data, frozenset({"replayed"}), old.sequence)

    def _topic_mismatch(self, kind):
        return self._env(kind, self.payload, topic_gateway="gw-2", reasons={"topic_mismatch"})

    def _gateway_not_allowed(self, kind):
        return self._env(kind, self.payload, gateway="gw-evil", reasons={"gateway_not_allowed"})

    def _clock_skew(self, kind):
        return self._env(kind, self.payload, t=time.time() + self.rng.choice([-86400.0, -3600.0, 3600.0, 1e9]),
                         reasons={"clock_skew"})


def publisher(broker) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=f"adv-{os.getpid()}")
    c.max_inflight_messages_set(64)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def run_campaign(corpus: AdversarialCorpus, client: mqtt.Client, n_bad: int, n_valid: int) -> list[Message]:
    """Publish n_bad hostile messages with n_valid valid ones spread evenly among them (QoS 1)."""
    every = max(1, n_bad // max(1, n_valid))
    sent, infos, valid_seq = [], [], 0
    for i in range(n_bad):
        if valid_seq < n_valid and i % every == 0:
            sent.append(corpus.valid(valid_seq))
            valid_seq += 1
            infos.append(client.publish(sent[-1].topic, sent[-1].data, qos=1))
        sent.append(corpus.bad(i))
        infos.append(client.publish(sent[-1].topic, sent[-1].data, qos=1))
        if len(infos) >= 256:
            for info in infos:
                info.wait_for_publish(30)
            infos = []
    while valid_seq < n_valid:
        sent.append(corpus.valid(valid_seq))
        valid_seq += 1
        infos.append(client.publish(sent[-1].topic, sent[-1].data, qos=1))
    for info in infos:
        info.wait_for_publish(30)
    return sent


def verdict(backend: BackendProcess, sent: list[Message]) -> dict:
    """Compare what the backend did with what each message's kind predicts."""
    valid = [m for m in sent if not m.reasons]
    expected: dict[str, int] = {}
    loose = 0
    for m in sent:
        if m.reasons == {REJECTED_ANYHOW}:
            loose += 1
        elif len(m.reasons) == 1:
            (r,) = m.reasons
            expected[r] = expected.get(r, 0) + 1
    rejected = backend.rejected()
    seen_valid = {s for (s,) in backend.db(f"SELECT sequence FROM seen WHERE camera = '{VALID_CAMERA}'")}
    return {
        "sent": len(sent), "valid": len(valid), "bad": len(sent) - len(valid),
        "alive": backend.proc.poll() is None,
        "processed": backend.handled()[1],
        "valid_processed": len(seen_valid & {m.sequence for m in valid}),
        "alerts": backend.db("SELECT COUNT(*) FROM alerts")[0][0],
        "rejected": rejected, "expected_exact": expected, "loose": loose,
    }
