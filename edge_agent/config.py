"""The gateway's configuration: pydantic models (unknown keys refused, every field described),
loaded by the shared YAML loader (service_common.yaml_loader), so every error names file, line
and field.

    cfg = load_config("/etc/fhe-edge/edge.yaml")      # ConfigError lists every problem at once
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from service_common.broker import BrokerSettings, TlsSettings, read_password_file
from service_common.settings import ConfigPath, Seconds, StrictModel
from service_common.yaml_loader import ConfigError, load_yaml_model

__all__ = ["ConfigError", "EdgeConfig", "MqttConfig", "load_config", "read_password", "read_signing_key"]

ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"   # the envelope's id alphabet (protected_nn/envelope.py)
DOCS_HINT = " (see docs/gateway.md)"


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"file {str(value)!r} does not exist or is not a regular file")
    return value


class CameraConfig(StrictModel):
    id: str = Field(pattern=ID_PATTERN, description="Camera id: MQTT topic level and envelope field "
                    "(1..64 chars of A-Z a-z 0-9 . _ -).")
    url: str = Field(description="RTSP URL of the camera stream, e.g. rtsp://10.0.0.5:554/stream1 "
                     "(user:password@ in the URL is accepted; it is never logged).")
    max_fps: float = Field(1.0, gt=0, le=60, description="Frames per second taken from this camera "
                           "at most; the stream is read at full rate, only the newest frame is used.")
    enabled: bool = Field(True, description="false: the camera is configured but not captured.")

    @field_validator("url")
    @classmethod
    def _rtsp_url(cls, v: str) -> str:
        if not re.match(r"^rtsps?://[^/\s]+", v):
            raise ValueError("must start with rtsp:// or rtsps:// followed by a host")
        return v


class TlsConfig(TlsSettings):
    ca_file: ConfigPath = Field(description="CA certificate (PEM) the broker's certificate must chain to.")

    _files = field_validator("ca_file", "cert_file", "key_file")(_existing_file)

    @model_validator(mode="after")
    def _pair(self) -> "TlsConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttConfig(BrokerSettings):
    tls: TlsConfig | None = Field(None, description="TLS settings; omit only on a trusted local link.")
    password_file: ConfigPath | None = Field(None, description="File holding the broker password (first "
                                             "line). Use this or password_credential, not both.")
    password_credential: str | None = Field(None, description="Name of a systemd credential "
                                            "(LoadCredential=) holding the password, read from "
                                            "$CREDENTIALS_DIRECTORY at start.")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of inference results (1 = at least once).")
    client_id: str | None = Field(None, min_length=1, max_length=64,
                                  description="MQTT client id; default edge-<gateway_id>.")
    max_in_flight: int = Field(16, ge=1, le=1000, description="Results handed to the broker and not "
                               "yet acknowledged, at most; the rest wait in the spool (old spelling: "
                               "max_inflight).")
    resume_delay_s: Seconds = Field(5.0, ge=0, le=300, description="After each (re)connection, results "
                                  "wait this long in the spool before they are sent. Mosquitto 2.0.11 does "
                                  "not restore shared subscriptions after a restart: until a backend replica "
                                  "has subscribed again, a result sent would be dropped by the broker. Keep "
                                  "it above the backend's mqtt.reconnect_max_s.")

    _files = field_validator("password_file")(_existing_file)

    @model_validator(mode="after")
    def _one_password_source(self) -> "MqttConfig":
        if self.password_file is not None and self.password_credential is not None:
            raise ValueError("give password_file or password_credential, not both")
        if (self.password_file or self.password_credential) and not self.username:
            raise ValueError("a password needs a username")
        if self.username and not (self.password_file or self.password_credential):
            raise ValueError(f"username {self.username!r} without a password: give password_file or "
                             "password_credential (the broker refuses a user without one)")
        return self


class SpoolConfig(StrictModel):
    directory: ConfigPath = Field(Path("/var/lib/edge-agent/spool"), description="Folder for results "
                            "waiting for the broker (systemd: StateDirectory).")
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="Spool size bound in bytes; "
                           "above it the oldest results are evicted (and counted).")


class CaptureConfig(StrictModel):
    open_timeout_s: Seconds = Field(10.0, gt=0, le=120, description="Give up opening a stream after this.")
    read_timeout_s: Seconds = Field(5.0, gt=0, le=120, description="A stream silent this long is "
                                  "considered gone: camera offline, reconnect.")
    reconnect_min_s: Seconds = Field(1.0, gt=0, description="First reconnect delay; doubles per failure.")
    reconnect_max_s: Seconds = Field(2.0, gt=0, description="Largest reconnect delay in seconds (retries go on forever); small so a camera that returns streams again within ~5 s.")


class EdgeConfig(StrictModel):
    gateway_id: str = Field(pattern=ID_PATTERN, description="This gateway's id: MQTT topic level "
                            "and envelope field.")
    bundle: ConfigPath = Field(description="Signed model bundle (from `backend-decryptor export`). "
                         "Replaced files are picked up without restart.")
    model_id: str | None = Field(None, pattern=ID_PATTERN, description="Model id every bundle must "
                                 "carry; a bundle of another model is refused. Default: the id of the first "
                                 "bundle this gateway ran (recorded in state_dir/bundle.json).")
    owner_public_key: ConfigPath = Field(description="The owner's Ed25519 public key (PEM); bundles not "
                                   "signed with it are refused.")
    signing_key_file: ConfigPath | None = Field(None, description="This gateway's own Ed25519 private key "
                                          "(from `edge-agent keygen`, mode 0600): every result is signed "
                                          "with it. Use this or signing_key_credential, not both.")
    signing_key_credential: str | None = Field(None, description="Name of a systemd credential "
                                               "(LoadCredential=) holding this gateway's signing key, read "
                                               "from $CREDENTIALS_DIRECTORY at start.")
    cameras: list[CameraConfig] = Field(min_length=1, description="The cameras of this gateway.")
    mqtt: MqttConfig = Field(description="The broker results are published to.")
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=64,
                         description="Worker processes running the encrypted model (default: cores).")
    queue_size: int = Field(4, ge=1, le=1000, description="Frames waiting for a worker, all cameras "
                            "together; when full the oldest frame of the same camera is dropped.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="On-disk result spool.")
    state_dir: ConfigPath = Field(Path("/var/lib/edge-agent"), description="Folder for state that must "
                            "survive restarts (per-camera sequence numbers).")
    capture: CaptureConfig = Field(default_factory=CaptureConfig, description="Stream timeouts and "
                                   "reconnect backoff.")
    metrics_address: str | None = Field("127.0.0.1:9464", pattern=r"^[^\s:]*:\d{1,5}$",
                                        description="host:port of the Prometheus endpoint; null = off.")
    stats_interval_s: Seconds = Field(30.0, ge=1, description="Seconds between stats messages on MQTT.")
    bundle_poll_s: Seconds = Field(10.0, ge=0.2, description="Seconds between checks of the bundle "
                                 "file for a new version (SIGHUP checks at once).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    _files = field_validator("owner_public_key", "signing_key_file")(_existing_file)

    @model_validator(mode="after")
    def _one_signing_key(self) -> "EdgeConfig":
        # Unsigned results are refused by the backend: a gateway without a key could send nothing.
        if (self.signing_key_file is None) == (self.signing_key_credential is None):
            raise ValueError("give exactly one of signing_key_file or signing_key_credential "
                             "(the gateway's key from `edge-agent keygen`)")
        return self

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        # A field validator (not a model one) so it is reported together with other fields' errors.
        seen = set()
        for cam in cameras:
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} appears twice")
            seen.add(cam.id)
        return cameras


def load_config(path: str | os.PathLike) -> EdgeConfig:
    """Parse and validate; relative paths in the file are taken relative to the file's folder."""
    return load_yaml_model(path, EdgeConfig, hint=DOCS_HINT)


def _credential(name: str, setting: str) -> Path:
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if not cred_dir:
        raise ConfigError([f"{setting}: {name!r} set but $CREDENTIALS_DIRECTORY is not "
                           "(run under systemd with LoadCredential=)"])
    return Path(cred_dir) / name


def signing_key_path(cfg: EdgeConfig) -> Path:
    if cfg.signing_key_file is not None:
        return cfg.signing_key_file
    return _credential(cfg.signing_key_credential, "signing_key_credential")


def read_signing_key(cfg: EdgeConfig):
    """The gateway's Ed25519 signing key; ConfigError naming the file on any problem."""
    from protected_nn.gateway_key import load_private_key
    from protected_nn.errors import KeyMaterialError
    field = "signing_key_file" if cfg.signing_key_file is not None else "signing_key_credential"
    try:
        return load_private_key(signing_key_path(cfg))
    except KeyMaterialError as exc:
        raise ConfigError([f"{field}: {exc}"]) from None


def read_password(mqtt: MqttConfig) -> str | None:
    """The broker password from its file or systemd credential (first line, newline stripped)."""
    if mqtt.password_file is not None:
        return read_password_file(mqtt.password_file, "mqtt.password_file")
    if mqtt.password_credential is not None:
        return read_password_file(_credential(mqtt.password_credential, "mqtt.password_credential"),
                                  "mqtt.password_credential")
    return None
