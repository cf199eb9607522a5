"""The adversarial corpus's constructions from issue 15 (a mixin of
tests/security/test_adversarial.py's AdversarialCorpus): forged, re-labelled, spliced and unsigned
envelopes, cross-gateway cameras, and ciphertexts built from the plan alone (tests/support/forgery.py).

Ciphertext forgeries are signed by the gateway's real key: they stand for a gateway that is itself
compromised (or for the world before signatures), so they reach the decoder and must be refused
THERE, by its own checks. Every chosen value would raise crowd and incident alerts if believed.
"""
from __future__ import annotations

import struct
import time

import numpy as np

from protected_nn import envelope
from protected_nn.gateway_key import generate
from tests.support.forgery import Forger
from tests.support.gateway_keys import key_for

ALARM = (25.0, 4.0)      # count 25 (threshold 10), incident logit 4 (p 0.98): both rules would fire
OTHER_GATEWAY = "gw-2"   # allowed, with its own valid key
KEYLESS_GATEWAY = "gw-nokey"   # allowed, but no public key configured

FORGERY_KINDS = ("transparent", "all_zero_coefficients", "scale_inf", "wrong_scale", "not_ntt", "small_c1",
                 "wrong_level", "unsigned", "forged_signature", "other_gateway_key", "unknown_gateway",
                 "relabelled_replay", "spliced", "cross_gateway_camera", "huge_sequence")


class ForgedMessages:
    """Needs from its host: self.rng, self.payload, self.valid_sent, self._env(...), self.plan."""

    def _forger(self) -> Forger:
        if getattr(self, "_forger_obj", None) is None:
            self._forger_obj = Forger(self.plan)
            self._np_rng = np.random.default_rng(self.rng.randrange(1 << 30))
        return self._forger_obj

    # -- ciphertexts from the plan alone (signed by the real gateway: the decoder must refuse them)
    def _transparent(self, kind):
        return self._env(kind, self._forger().transparent(ALARM), reasons={"result_transparent"})

    def _all_zero_coefficients(self, kind):
        return self._env(kind, self._forger().all_zero(), reasons={"result_transparent"})

    def _scale_inf(self, kind):
        return self._env(kind, self._forger().scale_inf(self._np_rng), reasons={"result_scale"})

    def _wrong_scale(self, kind):
        factor = self.rng.choice([0.5, 2.0, 1.0 + 2 ** -40])
        return self._env(kind, self._forger().wrong_scale(ALARM, factor), reasons={"result_scale"})

    def _not_ntt(self, kind):
        return self._env(kind, self._forger().not_ntt(ALARM), reasons={"result_not_ntt"})

    def _small_c1(self, kind):
        return self._env(kind, self._forger().small_c1(ALARM), reasons={"result_degenerate"})

    def _wrong_level(self, kind):
        return self._env(kind, self._forger().wrong_level(self.payload), reasons={"result_level"})

    # -- authentication
    def _unsigned(self, kind):
        return self._env(kind, self.payload, signer=False, reasons={"unsigned"})

    def _forged_signature(self, kind):
        return self._env(kind, self.payload, signer=generate(), reasons={"bad_signature"})

    def _other_gateway_key(self, kind):
        return self._env(kind, self.payload, signer=key_for(OTHER_GATEWAY), reasons={"bad_signature"})

    def _unknown_gateway(self, kind):
        return self._env(kind, self.payload, gateway=KEYLESS_GATEWAY, reasons={"unknown_gateway"})

    def _relabelled_replay(self, kind):
        """A real result re-sent with a new sequence, time and camera (the broker can do this)."""
        if not self.valid_sent:
            return self._unsigned("unsigned")
        old = envelope.decode(self.rng.choice(self.valid_sent).data)
        new = self._env(kind, old.payload, signer=generate(), t=time.time())
        new.data = new.data[:-64] + old.signature
        new.reasons = frozenset({"bad_signature"})
        return new

    def _spliced(self, kind):
        """A fresh header (the real gateway's own, validly signed) with another result's payload:
        keep the header's signature, swap the payload bytes."""
        if not self.valid_sent:
            return self._unsigned("unsigned")
        other = envelope.decode(self.rng.choice(self.valid_sent).data).payload
        m = self._env(kind, bytes(len(other)))
        at = len(m.data) - 64 - len(other)
        m.data = m.data[:at] + other + m.data[at + len(other):]
        m.reasons = frozenset({"bad_signature"})
        return m

    def _cross_gateway_camera(self, kind):
        """Another real gateway, with its own valid key, sends for the valid stream's camera."""
        if not self.valid_sent:
            return self._unsigned("unsigned")
        return self._env(kind, self.payload, gateway=OTHER_GATEWAY, camera=self.valid_sent[0].topic.rsplit("/", 1)[1],
                         reasons={"camera_taken"})

    def _huge_sequence(self, kind):
        m = self._env(kind, self.payload)
        at = len(m.data) - 64 - len(self.payload) - 20
        m.data = m.data[:at] + struct.pack(">Q", self.rng.choice([2 ** 63, 2 ** 63 + 7, 2 ** 64 - 1])) + m.data[at + 8:]
        m.reasons = frozenset({"out_of_range"})
        return m
