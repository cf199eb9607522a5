"""The gateway's configuration: pydantic models (unknown keys refused, every field described) and a
YAML loader that keeps line numbers, so every error names file, line and field.

    cfg = load_config("/etc/fhe-edge/edge.yaml")      # ConfigError lists every problem at once
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from protected_nn.config_words import explain_errors, parse_duration, resolve_path_setting

ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"   # the envelope's id alphabet (protected_nn/envelope.py)
# Seconds: a number, or a duration with a unit as on the backend (250ms, 5s, 2m, 1h).
Seconds = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"file {str(value)!r} does not exist or is not a regular file")
    return value


class CameraConfig(_Strict):
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


class TlsConfig(_Strict):
    ca_file: Path = Field(description="CA certificate (PEM) the broker's certificate must chain to.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS; optional.")
    key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate.")

    _files = field_validator("ca_file", "cert_file", "key_file")(_existing_file)

    @model_validator(mode="after")
    def _pair(self) -> "TlsConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttConfig(_Strict):
    host: str = Field(description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is the usual TLS port).")
    tls: TlsConfig | None = Field(None, description="TLS settings; omit only on a trusted local link.")
    username: str | None = Field(None, description="User name for the broker; omit for anonymous.")
    password_file: Path | None = Field(None, description="File holding the broker password (first "
                                       "line). Use this or password_credential, not both.")
    password_credential: str | None = Field(None, description="Name of a systemd credential "
                                            "(LoadCredential=) holding the password, read from "
                                            "$CREDENTIALS_DIRECTORY at start.")
    topic_prefix: str = Field("fhe-edge", pattern=r"^[A-Za-z0-9._/-]{1,64}$",
                              description="First topic level(s) of every topic the gateway uses.")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of inference results (1 = at least once).")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keep-alive in seconds.")
    client_id: str | None = Field(None, description="MQTT client id; default edge-<gateway_id>.")
    max_inflight: int = Field(16, ge=1, le=1000, description="Results handed to the broker and not "
                              "yet acknowledged, at most; the rest wait in the spool.")
    resume_delay_s: Seconds = Field(5.0, ge=0, le=300, description="After each (re)connection, results "
                                  "wait this long in the spool before they are sent. Mosquitto 2.0.11 does "
                                  "not restore shared subscriptions after a restart: until a backend replica "
                                  "has subscribed again, a result sent would be dropped by the broker. Keep "
                                  "it above the backend's mqtt.reconnect_max_s.")

    _files = field_validator("password_file")(_existing_file)

    @field_validator("host")
    @classmethod
    def _bare_host(cls, v: str) -> str:
        if "://" in v or "/" in v:
            raise ValueError(f"{v!r}: give the host name; TLS is the tls: section (and the port is port:)")
        if not v.strip():
            raise ValueError("must not be empty")
        return v

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


class SpoolConfig(_Strict):
    directory: Path = Field(Path("/var/lib/edge-agent/spool"), description="Folder for results "
                            "waiting for the broker (systemd: StateDirectory).")
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="Spool size bound in bytes; "
                           "above it the oldest results are evicted (and counted).")


class CaptureConfig(_Strict):
    open_timeout_s: Seconds = Field(10.0, gt=0, le=120, description="Give up opening a stream after this.")
    read_timeout_s: Seconds = Field(5.0, gt=0, le=120, description="A stream silent this long is "
                                  "considered gone: camera offline, reconnect.")
    reconnect_min_s: Seconds = Field(1.0, gt=0, description="First reconnect delay; doubles per failure.")
    reconnect_max_s: Seconds = Field(2.0, gt=0, description="Largest reconnect delay in seconds (retries go on forever); small so a camera that returns streams again within ~5 s.")


class EdgeConfig(_Strict):
    gateway_id: str = Field(pattern=ID_PATTERN, description="This gateway's id: MQTT topic level "
                            "and envelope field.")
    bundle: Path = Field(description="Signed model bundle (from `backend-decryptor export`). "
                         "Replaced files are picked up without restart.")
    model_id: str | None = Field(None, pattern=ID_PATTERN, description="Model id every bundle must "
                                 "carry; a bundle of another model is refused. Default: the id of the first "
                                 "bundle this gateway ran (recorded in state_dir/bundle.json).")
    owner_public_key: Path = Field(description="The owner's Ed25519 public key (PEM); bundles not "
                                   "signed with it are refused.")
    signing_key_file: Path | None = Field(None, description="This gateway's own Ed25519 private key "
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
    state_dir: Path = Field(Path("/var/lib/edge-agent"), description="Folder for state that must "
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


class ConfigError(ValueError):
    """All problems of one config file, each as 'file:line: field: message'."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _record_lines(node, path: tuple, lines: dict, duplicates: list, seen: set) -> None:
    """Record the 1-based line of every settings path of a composed YAML node (the data itself
    comes from yaml.safe_load, which handles merge keys and refuses unhashable keys). Aliases can
    make the node graph cyclic: each node is walked once. A key given twice in one mapping is
    collected in `duplicates` as (path, line, first line): PyYAML silently keeps the last one."""
    if id(node) in seen:
        return
    seen.add(id(node))
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first_line: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = yaml.safe_load(yaml.serialize(key_node))  # one scalar: resolves tags like safe_load
            line = key_node.start_mark.line + 1
            if key in first_line:
                duplicates.append((path + (key,), line, first_line[key]))
                continue
            first_line[key] = line
            lines[path + (key,)] = line
            _record_lines(value_node, path + (key,), lines, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, path + (i,), lines, duplicates, seen)


def _line_of(loc: tuple, lines: dict) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _field_name(loc: tuple) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "(top level)"


def load_config(path: str | os.PathLike, base_dir: Path | None = None) -> EdgeConfig:
    """Parse and validate; relative paths in the file are taken relative to the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or ("aliases nested too deep" if isinstance(exc, RecursionError)
                                                    else exc)
        raise ConfigError([f"{where}: YAML syntax: {problem}"]) from None
    if node is None or not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        raise ConfigError([f"{path}:1: (top level): expected a mapping of settings"])
    lines: dict = {}
    duplicates: list = []
    _record_lines(node, (), lines, duplicates, set())
    if duplicates:
        raise ConfigError([f"{path}:{line}: {_field_name(loc)}: given twice (first on line {first})"
                           for loc, line, first in duplicates])
    data = _resolve_paths(data, base_dir or path.parent)
    try:
        return EdgeConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{path}:{_line_of(loc, lines)}: {_field_name(loc)}: {msg}"
                    for loc, msg in explain_errors(EdgeConfig, exc.errors(), " (see docs/gateway.md)")]
        raise ConfigError(problems) from None


_PATH_FIELDS = [("bundle",), ("owner_public_key",), ("signing_key_file",), ("state_dir",), ("spool", "directory"),
                ("mqtt", "password_file"), ("mqtt", "tls", "ca_file"), ("mqtt", "tls", "cert_file"),
                ("mqtt", "tls", "key_file")]


def _resolve_paths(data: dict, base: Path) -> dict:
    """Make relative file settings relative to the config file (not to the working directory)."""
    for fields in _PATH_FIELDS:
        holder = data
        for key in fields[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(fields[-1]), str):
            holder[fields[-1]] = resolve_path_setting(holder[fields[-1]], base)
    return data


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
        source, field = mqtt.password_file, "mqtt.password_file"
    elif mqtt.password_credential is not None:
        source, field = _credential(mqtt.password_credential, "mqtt.password_credential"), "mqtt.password_credential"
    else:
        return None
    try:
        return source.read_text(encoding="utf-8").splitlines()[0] if source.stat().st_size else ""
    except OSError as exc:
        raise ConfigError([f"{field} {source}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{field} {source}: not UTF-8 text"]) from None
