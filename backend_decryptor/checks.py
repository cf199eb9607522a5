"""Checks every inference message passes BEFORE any decryption work is spent on it.

Order (cheapest and least trusting first): size -> envelope parse (magic, version, fields,
lengths, ranges) -> topic agrees with the envelope -> gateway allow-list -> the gateway's signature
over header and payload (v2: Ed25519 per message; v3: the gateway's certified agreement key, checked
once, and a per-message AES-GCM tag under the key agreed with the model's result key) -> camera allow-list of that gateway -> the camera belongs to that gateway
(reserved in the config, or bound on first use and persisted) -> known model -> known key
fingerprint -> capture time within the skew bound -> sequence not seen before -> the gateway's rate
limit. Nothing the envelope says is believed before the signature verifies: a forger cannot bind
cameras, spend a gateway's tokens or reach the decryptor. The rate limit comes last so that only
messages that would really be decrypted spend the gateway's tokens (garbage, replays and
redeliveries do not). A failure raises `Rejected(reason)`; the reasons are the metrics labels and
the words in the one log line.
"""
from __future__ import annotations

import fnmatch
import time
from typing import Callable

from protected_nn import envelope as env_mod
from protected_nn.errors import EnvelopeError
from protected_nn.gateway_key import parse_public_key
from protected_nn.result_auth import ResultVerifier
from protected_nn.runtime.result_checks import REASONS as RESULT_REASONS

from backend_decryptor.catalog import knows
from backend_decryptor.config import ChecksConfig, LimitsConfig, reserved_pairs
from backend_decryptor.rate_limit import GatewayRateLimiter
from service_common.topics import TopicError, Topics

# Every reason a message can be dropped for (before or after decryption), for docs and metrics.
REASONS = (
    "too_large", "bad_magic", "bad_version", "truncated", "bad_field", "out_of_range", "length_mismatch",
    "trailing_bytes", "bad_topic", "topic_mismatch", "gateway_not_allowed", "unsigned", "unknown_gateway",
    "bad_signature", "camera_not_allowed", "camera_taken", "too_many_cameras", "unknown_model", "unknown_key",
    "clock_skew", "replayed", "rate_limited", "decrypt_failed", *RESULT_REASONS, "bad_output",
    "implausible_output", "internal_error",
)


class Rejected(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class MessageChecker:
    def __init__(self, cfg: ChecksConfig, prefix: str, catalog, seen: Callable[[str, str, int], bool],
                 clock: Callable[[], float] = time.time, limits: LimitsConfig | None = None,
                 bind: Callable[[str, str, int], str | None] | None = None):
        """`seen(gateway, camera, sequence)` answers the replay question (SQLite + in-flight set);
        `bind(gateway, camera, limit)` returns the camera's owner, binding it to `gateway` if it has
        none and the gateway holds fewer than `limit` cameras (None: over the limit)."""
        self.cfg = cfg
        self.keys = {g: parse_public_key(k) for g, k in cfg.gateway_keys.items()}
        self.reserved = {camera: gateway for gateway, camera in reserved_pairs(cfg.gateway_cameras)}
        self.bind = bind
        limits = limits if limits is not None else LimitsConfig()
        self.limiter = (GatewayRateLimiter(limits.per_gateway_rate, limits.per_gateway_burst, cfg.max_clock_skew)
                        if limits.per_gateway_rate is not None else None)
        self.topics = Topics(prefix)
        self.catalog = catalog
        # envelope v3: a MAC key agreed once per (gateway, model key) - the catalog holds the keys
        self.results = ResultVerifier(catalog.result_key) if hasattr(catalog, "result_key") else None
        self.seen = seen
        # in_flight(gateway, camera, sequence): the in-process half of `seen`; when set and the
        # limiter can check the stored half itself (checks_seen), both go in one call
        self.in_flight: Callable[[str, str, int], bool] | None = None
        self.clock = clock

    def topic_ids(self, topic: str) -> tuple[str, str]:
        try:
            return self.topics.parse_infer(topic)
        except TopicError as exc:
            raise Rejected("bad_topic", str(exc)) from None

    def gateway_allowed(self, gateway: str) -> bool:
        return any(fnmatch.fnmatchcase(gateway, pattern) for pattern in self.cfg.allowed_gateways)

    def camera_allowed(self, gateway: str, camera: str) -> bool:
        lists = [cams for pattern, cams in self.cfg.gateway_cameras.items() if fnmatch.fnmatchcase(gateway, pattern)]
        if not lists:
            return not self.cfg.cameras_required
        return any(fnmatch.fnmatchcase(camera, c) for cams in lists for c in cams)

    def verify(self, data: bytes, env: env_mod.Envelope) -> None:
        key = self.keys.get(env.gateway_id)
        if key is None:
            raise Rejected("unknown_gateway", f"gateway {env.gateway_id} has no public key in checks.gateway_keys")
        try:
            if env.version == env_mod.AUTH_VERSION:
                if self.results is None:
                    raise EnvelopeError("bad_version", "envelope v3 needs result keys this catalog does not hold")
                self.results.verify(data, env, key)
            else:
                env_mod.verify(data, env, key)
        except EnvelopeError as exc:
            raise Rejected(exc.reason, f"{env.gateway_id}/{env.camera_id} #{env.sequence}: {exc}") from None

    def check_owner(self, gateway: str, camera: str) -> None:
        owner = self.reserved.get(camera)
        if owner is None and self.bind is not None:
            owner = self.bind(gateway, camera, self.cfg.max_cameras_per_gateway)
            if owner is None:
                raise Rejected("too_many_cameras", f"gateway {gateway} already holds "
                                                   f"{self.cfg.max_cameras_per_gateway} cameras; {camera} refused "
                                                   "(checks.max_cameras_per_gateway)")
        if owner is not None and owner != gateway:
            raise Rejected("camera_taken", f"camera {camera} belongs to gateway {owner}, not {gateway}")

    def check(self, topic: str, data: bytes) -> env_mod.Envelope:
        if len(data) > self.cfg.max_message_bytes:
            raise Rejected("too_large", f"{len(data)} bytes on {topic[:120]!r} exceeds {self.cfg.max_message_bytes}")
        try:
            env = env_mod.decode(data, max_size=self.cfg.max_message_bytes)
        except EnvelopeError as exc:
            raise Rejected(exc.reason, f"on {topic[:120]!r}: {exc}") from None
        gateway, camera = self.topic_ids(topic)
        if (gateway, camera) != (env.gateway_id, env.camera_id):
            raise Rejected("topic_mismatch", f"envelope says {env.gateway_id}/{env.camera_id} "
                                             f"but arrived on {gateway}/{camera}")
        if not self.gateway_allowed(env.gateway_id):
            raise Rejected("gateway_not_allowed", f"gateway {env.gateway_id} is not on checks.allowed_gateways")
        self.verify(data, env)
        if not self.camera_allowed(env.gateway_id, env.camera_id):
            raise Rejected("camera_not_allowed", f"camera {env.camera_id} is not on checks.gateway_cameras "
                                                 f"for gateway {env.gateway_id}")
        self.check_owner(env.gateway_id, env.camera_id)
        if self.catalog.fingerprints(env.model_id) is None:
            raise Rejected("unknown_model", f"model {env.model_id} (from {env.gateway_id}) is not in the store")
        if not knows(self.catalog, env.model_id, env.key_fingerprint):
            raise Rejected("unknown_key", f"model {env.model_id} has no key {env.key_fingerprint} "
                                          f"(from {env.gateway_id})")
        skew = env.capture_time - self.clock()
        if abs(skew) > self.cfg.max_clock_skew:
            raise Rejected("clock_skew", f"{env.gateway_id}/{env.camera_id} #{env.sequence}: capture time is "
                                         f"{skew:+.0f} s from the backend clock (limit {self.cfg.max_clock_skew:.0f} s)")
        if self.in_flight is not None and getattr(self.limiter, "checks_seen", False):
            # the stored bucket answers "seen?" too, in the same round trip (storage/postgres.py)
            if self.in_flight(env.gateway_id, env.camera_id, env.sequence):
                self._replayed(env)
            verdict = self.limiter.allow_unseen(env.gateway_id, env.camera_id, env.sequence, env.capture_time,
                                                self.clock())
            if verdict == "replayed":
                self._replayed(env)
            if verdict == "rate_limited":
                self._rate_limited(env)
            return env
        if self.seen(env.gateway_id, env.camera_id, env.sequence):
            self._replayed(env)
        if self.limiter is not None and not self.limiter.allow(env.gateway_id, env.capture_time, self.clock()):
            self._rate_limited(env)
        return env

    @staticmethod
    def _replayed(env: env_mod.Envelope):
        raise Rejected("replayed", f"{env.gateway_id}/{env.camera_id} #{env.sequence} was already handled")

    def _rate_limited(self, env: env_mod.Envelope):
        raise Rejected("rate_limited", f"{env.gateway_id}/{env.camera_id} #{env.sequence}: gateway over "
                                       f"{self.limiter.rate:g} msg/s (burst {self.limiter.burst:g})")
