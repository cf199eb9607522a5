"""The backend service's configuration (configs/backend.yaml), validated with pydantic.

Every field has a description (shown by `backend-decryptor check-config`'s errors and in
docs/backend.md). Unknown settings are errors, so a typo never silently falls back to a default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from service_common.broker import BrokerSettings, TlsSettings, read_password_file
from service_common.settings import ConfigPath, ConfigPathText, Seconds, StrictModel, relative_to_config
from service_common.yaml_loader import ConfigError, load_yaml_model

__all__ = ["BackendConfig", "ConfigError", "MQTTConfig", "load_config"]
DOCS_HINT = " (check the spelling; see docs/backend.md)"


def _password(setting_value: str | None, setting: str) -> str | None:
    """A password from its file, or None when the setting is empty (service_common.broker)."""
    return read_password_file(setting_value, setting) if setting_value else None


class MQTTConfig(BrokerSettings):
    host: str = Field("127.0.0.1", description="broker host name or address")
    password_file: ConfigPathText | None = Field(
        None, description="file holding the MQTT password; $VARIABLES are expanded, so "
                          "${CREDENTIALS_DIRECTORY}/mqtt-password works with systemd LoadCredential")
    client_id: str = Field("backend-decryptor-1", min_length=1, max_length=64,
                           description="MQTT client id of this replica: unique per replica, stable across restarts "
                                       "(the broker keeps its session and un-acknowledged messages under it)")
    shared_group: str = Field("backend", min_length=1, pattern=r"^[^/+#]+$",
                              description="shared subscription group: replicas in one group split the inference stream")
    session_expiry: Seconds = Field(3600.0, ge=0, description="how long the broker keeps this replica's session "
                                                             "(and queues its messages) while it is down")
    reconnect_max_s: Seconds = Field(2.0, ge=1, le=60,
                                     description="longest wait between reconnection attempts; keep it below the "
                                                 "gateways' mqtt.resume_delay_s: after a broker restart Mosquitto "
                                                 "(2.0.11) has lost the shared subscription until this replica is back")
    max_in_flight: int = Field(16, ge=1, le=65535,
                               description="MQTT 5 receive maximum: messages delivered but not yet acknowledged; "
                                           "bounds memory and lets the broker spread load across replicas")

    def password(self) -> str | None:
        return _password(self.password_file, "mqtt.password_file")


class ChecksConfig(StrictModel):
    max_message_bytes: int = Field(4 << 20, ge=64, description="largest accepted inference message, bytes")
    max_clock_skew: Seconds = Field(300.0, gt=0,
                                    description="largest accepted |capture time - backend clock|; also bounds how "
                                                "long seen sequence numbers must be remembered")
    allowed_gateways: list[str] = Field(
        default_factory=list,
        description="gateway ids allowed to send inferences (shell patterns such as 'gw-*' allowed); empty = none")

    gateway_keys: dict[str, str] = Field(
        default_factory=dict,
        description="each gateway's Ed25519 public key ('ed25519:<base64>', printed by `edge-agent keygen`), "
                    "by exact gateway id; every result must carry a valid signature by its gateway's key "
                    "(checked before anything else is believed), else unsigned / unknown_gateway / bad_signature")
    gateway_cameras: dict[str, list[str]] = Field(
        default_factory=dict,
        description="camera allow-list per gateway: gateway id (or shell pattern) -> the camera ids (or "
                    "patterns) it may send for; a gateway matching several keys gets the union. An exact "
                    "camera id under an exact gateway id is reserved for that gateway; any other camera is "
                    "bound to the first gateway that sends a valid result for it (persisted in state_db)")
    cameras_required: bool = Field(
        True, description="reject every message of a gateway that has no gateway_cameras entry (false: such "
                          "a gateway may use camera ids no other gateway holds, at most max_cameras_per_gateway)")
    max_cameras_per_gateway: int = Field(
        64, ge=1, le=100000,
        description="camera ids one gateway may hold at most (bounds the retained state and Home Assistant "
                    "configs invented ids could leave in the broker); beyond it: too_many_cameras")

    @field_validator("allowed_gateways")
    @classmethod
    def _no_blank(cls, v: list[str]) -> list[str]:
        if any(not g.strip() for g in v):
            raise ValueError("gateway ids must not be blank")
        return v

    @field_validator("gateway_keys")
    @classmethod
    def _valid_keys(cls, v: dict[str, str]) -> dict[str, str]:
        from protected_nn.envelope import valid_field
        from protected_nn.gateway_key import parse_public_key
        for gateway, key in v.items():
            if not valid_field(gateway):
                raise ValueError(f"gateway id {gateway!r}: expected 1..64 chars of [A-Za-z0-9._-] (no patterns: "
                                 "one key per gateway)")
            try:
                parse_public_key(key)
            except ValueError as exc:
                raise ValueError(f"gateway {gateway}: {exc}") from None
        return v

    @field_validator("gateway_cameras")
    @classmethod
    def _no_blank_cameras(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for gateway, cameras in v.items():
            if not gateway.strip():
                raise ValueError("gateway ids must not be blank")
            if any(not c.strip() for c in cameras):
                raise ValueError(f"gateway {gateway}: camera ids must not be blank")
        owners: dict[str, str] = {}
        for gateway, camera in reserved_pairs(v):
            if owners.setdefault(camera, gateway) != gateway:
                raise ValueError(f"camera {camera} is listed for gateways {owners[camera]} and {gateway}: "
                                 "a camera belongs to one gateway")
        return v


def is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def reserved_pairs(gateway_cameras: dict[str, list[str]]):
    """(gateway, camera) for every exact camera id listed under an exact gateway id."""
    for gateway, cameras in gateway_cameras.items():
        if not is_pattern(gateway):
            yield from ((gateway, c) for c in cameras if not is_pattern(c))


class LimitsConfig(StrictModel):
    per_gateway_rate: float | None = Field(
        10.0, gt=0,
        description="messages per second one gateway may have decrypted, all its cameras together "
                    "(token bucket on capture time; null = no limit); the default fits a gateway with "
                    "5 cameras at 2 fps. Per replica: N replicas let a gateway through N times this")
    per_gateway_burst: int = Field(
        30, ge=1, description="token bucket size: messages a gateway may send beyond the rate at once "
                              "(out-of-order results, several cameras in the same instant)")


class DecryptConfig(StrictModel):
    workers: int = Field(2, ge=0, le=64, description="decryption worker processes; 0 decrypts in the service process")
    timeout: Seconds = Field(60.0, gt=0, description="longest one decryption may take before it counts as failed")


class HomeAssistantConfig(StrictModel):
    enabled: bool = Field(False, description="publish Home Assistant MQTT discovery for each camera seen")
    discovery_prefix: str = Field("homeassistant", min_length=1, description="Home Assistant's discovery topic prefix")


class AlertsConfig(StrictModel):
    rules_file: ConfigPath = Field(Path("alert-rules.yaml"), validate_default=True,
                             description="alert rules YAML; relative paths are relative to this config file")
    state_interval: Seconds = Field(60.0, ge=0,
                                    description="republish a camera's retained state at least this often even "
                                                "when nothing changed (0 = only on change)")
    home_assistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig,
                                                description="Home Assistant MQTT discovery")


class MetricsConfig(StrictModel):
    listen: str | None = Field(None, pattern=r"^[^:]+:\d{1,5}$",
                               description="host:port for the Prometheus /metrics endpoint; off when unset")


_PG_SCHEMES = ("postgresql://", "postgres://")


def _database_shorthand(v):
    return {"url": v} if isinstance(v, (str, Path)) else v


class DatabaseConfig(StrictModel):
    """Where the state lives: SQLite (one host) or PostgreSQL (replicas on several hosts)."""
    url: str | None = Field(
        None, description="a postgresql://user@host:port/dbname URL puts all state in PostgreSQL (replicas on "
                          "several hosts share it); a file path (or unset: state_db) keeps the embedded SQLite file")
    password_file: ConfigPathText | None = Field(
        None, description="file holding the PostgreSQL password; $VARIABLES are expanded, so "
                          "${CREDENTIALS_DIRECTORY}/db-password works with systemd LoadCredential "
                          "(a password in the URL is refused)")
    sslmode: str = Field("verify-full", pattern=r"^(disable|allow|prefer|require|verify-ca|verify-full)$",
                         description="libpq sslmode; verify-full (the default) checks the server certificate "
                                     "and host name")
    sslrootcert: ConfigPath | None = Field(None, description="CA certificate(s) the server's certificate must chain to")
    sslcert: ConfigPath | None = Field(None, description="client certificate (optional)")
    sslkey: ConfigPath | None = Field(None, description="private key of sslcert")
    connect_timeout: Seconds = Field(10.0, ge=1, description="longest wait for a connection to PostgreSQL")
    retry_for: Seconds = Field(10.0, ge=0, description="how long an operation retries a lost PostgreSQL connection "
                                                      "before the result at hand is dropped (internal_error)")
    synchronous_commit: bool = Field(
        True, description="wait for each result's commit to reach PostgreSQL's disk (on: survives a database host "
                          "crash; off: about the durability of the SQLite default, WAL without fsync per commit - "
                          "a database host crash can lose the last fraction of a second of handled results)")
    retention: Seconds | None = Field(
        None, gt=0, description="delete published alert history older than this (by the alert's capture time), "
                                "a batch at a time from the housekeeping; unset = keep it all")
    batch_max: int = Field(
        32, ge=1, le=1024,
        description="group commit: results decided and committed in ONE transaction at most (the ones already "
                    "decrypted, in arrival order; each acknowledged only after that commit); 1 = a transaction per "
                    "result. mqtt.max_in_flight bounds it too (no more are ever delivered at once)")
    batch_wait: Seconds = Field(
        0.0, ge=0, le=0.1,
        description="how long a batch may wait for more results to be decrypted once its first is ready "
                    "(adds at most this to a result's latency); 0 = take only those already decrypted")
    outbox_lease: Seconds = Field(30.0, ge=1, le=3600,
                                  description="an unacknowledged alert stays with the replica that stored it this "
                                              "long after that replica stops renewing it; then another replica "
                                              "publishes it")

    @field_validator("url", mode="before")
    @classmethod
    def _file_relative_to_config(cls, v, info: ValidationInfo):
        if isinstance(v, (str, Path)) and not str(v).startswith(_PG_SCHEMES):
            return relative_to_config(v, info)     # the SQLite file: a path like state_db
        return v

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, v: str | None) -> str | None:
        if v and v.startswith(_PG_SCHEMES):
            from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 (psycopg only when configured)
            try:
                params = conninfo_to_dict(v)
            except Exception as exc:
                raise ValueError(f"not a valid PostgreSQL URL: {exc}") from None
            if params.get("password"):
                raise ValueError("the URL holds a password: put it in database.password_file instead")
        return v

    @property
    def is_postgres(self) -> bool:
        return bool(self.url) and self.url.startswith(_PG_SCHEMES)

    def password(self) -> str | None:
        return _password(self.password_file, "database.password_file")

    def conninfo(self, application_name: str = "backend-decryptor") -> str:
        """libpq connection string: the URL plus the TLS options (the password is passed apart)."""
        from psycopg.conninfo import make_conninfo
        extra = {k: str(getattr(self, k)) for k in ("sslrootcert", "sslcert", "sslkey") if getattr(self, k)}
        if not self.synchronous_commit:
            extra["options"] = "-c synchronous_commit=off"
        return make_conninfo(self.url, sslmode=self.sslmode, connect_timeout=int(self.connect_timeout),
                             application_name=application_name[:63], **extra)


class BackendConfig(StrictModel):
    store: ConfigPath = Field(Path("/var/lib/backend-decryptor/store"),
                        description="protected model store (models, keys, model cards)")
    state_db: ConfigPath = Field(Path("/var/lib/backend-decryptor/state.db"),
                           description="SQLite file: alert history, counters, rule state, seen sequences; replicas "
                                       "on one host share it")
    database: Annotated[DatabaseConfig, BeforeValidator(_database_shorthand)] = Field(
        default_factory=DatabaseConfig,
        description="where the state lives: unset or a path = the SQLite file (state_db); a postgresql:// URL "
                    "(or {url: ..., password_file: ..., sslmode: ..., sslrootcert: ...}) = PostgreSQL")
    mqtt: MQTTConfig = Field(default_factory=MQTTConfig, description="broker connection")
    checks: ChecksConfig = Field(default_factory=ChecksConfig, description="checks run before any decryption")
    limits: LimitsConfig = Field(default_factory=LimitsConfig,
                                 description="per-gateway rate limit, checked before any decryption")
    decrypt: DecryptConfig = Field(default_factory=DecryptConfig, description="decryption pool")
    alerts: AlertsConfig = Field(default_factory=dict, validate_default=True, description="alert rules and publishing")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="log level")

    def sqlite_path(self) -> Path:
        """The SQLite file when the state is not in PostgreSQL: database.url if it is a path, else state_db."""
        return Path(self.database.url) if self.database.url else self.state_db

    def describe_database(self) -> str:
        if self.database.is_postgres:
            from psycopg.conninfo import conninfo_to_dict
            p = conninfo_to_dict(self.database.url)
            return (f"postgresql {p.get('user', '?')}@{p.get('host', 'localhost')}:{p.get('port', 5432)}/"
                    f"{p.get('dbname', '?')} sslmode={self.database.sslmode}")
        return f"sqlite {self.sqlite_path()}"


def load_config(path: str | Path) -> BackendConfig:
    """Load and validate; relative paths in the file (every path setting) are resolved against the
    file's directory, as configs/backend.yaml documents. An empty file means every default."""
    return load_yaml_model(path, BackendConfig, hint=DOCS_HINT, allow_empty=True)
