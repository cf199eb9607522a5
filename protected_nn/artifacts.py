"""The public parts of a protected model, as bytes: what a bundle carries to a gateway.

Nothing in here is secret for the gateway's purposes: the plan (architecture, layouts), the CKKS
context, the public/relinearization/rotation keys and the *encrypted* parameters. The secret key is
never a member (see api.Protected.secret_key)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields

MEMBERS = ("plan", "context", "public_key", "relin_key", "rotation_keys", "params", "model_card")


@dataclass(frozen=True)
class ModelArtifacts:
    plan: bytes           # JSON: compiled plan (layouts, steps, shapes, parameter set)
    context: bytes        # Pyfhel context bytes (CKKS parameters)
    public_key: bytes
    relin_key: bytes
    rotation_keys: bytes  # Galois keys for exactly the plan's rotation steps
    params: bytes         # encrypted trained parameters (serialized ciphertexts)
    model_card: bytes     # JSON: what the outputs mean, input spec (size, channels, normalisation)

    @property
    def key_fingerprint(self) -> str:
        return key_fingerprint_of(self.public_key)

    def member(self, name: str) -> bytes:
        """One member's bytes by name: the interface the gateway's loader reads (EdgeModel), which
        edge_agent/sealed_artifacts.py implements too, without holding every member in memory."""
        if name not in MEMBERS:
            raise KeyError(f"no bundle member {name!r}")
        return getattr(self, name)

    def as_members(self) -> dict[str, bytes]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_members(cls, members: dict[str, bytes]) -> "ModelArtifacts":
        missing = [m for m in MEMBERS if m not in members]
        if missing:
            raise KeyError(f"missing members: {', '.join(missing)}")
        return cls(**{m: members[m] for m in MEMBERS})

    def plan_json(self) -> dict:
        return json.loads(self.plan)

    def card(self):
        return parse_model_card(self.model_card)


def key_fingerprint_of(public_key: bytes) -> str:
    """Identifies the key pair: sha256 of the public key, first 16 hex digits."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def parse_model_card(raw: bytes):
    """The model card as a `protected_nn.model_card.ModelCard`; CardError if it does not fit
    the schema (an empty member is a card with nothing in it)."""
    from protected_nn.model_card import parse_card  # pydantic: only for those who read cards
    return parse_card(None, raw)
