"""The broker settings both services read (the `mqtt:` section), under one naming scheme, and
the broker password.

Each service's `mqtt:` model derives from BrokerSettings and adds what only it needs (the gateway:
QoS, resume delay, a systemd credential; the backend: shared group, session expiry). Two keys were
spelled differently by the two services; both now read `topic_prefix` and `max_in_flight`, and the
old spellings (`prefix` on the backend, `max_inflight` on the gateway) keep working with a warning
naming file and line.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator

from service_common.settings import ConfigPath, StrictModel
from service_common.yaml_loader import ConfigError, read_text

TOPIC_PREFIX_PATTERN = r"^[A-Za-z0-9._/-]{1,64}$"


class TlsSettings(StrictModel):
    ca_file: ConfigPath | None = Field(None, description="CA certificate(s) (PEM) the broker's certificate "
                                       "must chain to; the system CAs if unset.")
    cert_file: ConfigPath | None = Field(None, description="Client certificate (PEM) for mutual TLS; optional.")
    key_file: ConfigPath | None = Field(None, description="Private key (PEM) of cert_file.")
    insecure: bool = Field(False, description="Skip the broker host name check (testing only, never in "
                                              "production).")


class BrokerSettings(StrictModel):
    """What every MQTT client of the system is configured with."""
    renamed_settings = {"prefix": "topic_prefix", "max_inflight": "max_in_flight"}

    host: str = Field(description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is the usual TLS port).")
    tls: TlsSettings | None = Field(None, description="TLS settings; plain TCP when absent (only on a "
                                                      "trusted local link).")
    username: str | None = Field(None, description="User name for the broker; omit for anonymous.")
    client_id: str | None = Field(None, min_length=1, max_length=64, description="MQTT client id.")
    topic_prefix: str = Field("fhe-edge", pattern=TOPIC_PREFIX_PATTERN,
                              description="First topic level(s) of every topic; the same on gateways and "
                                          "backend (old spelling on the backend: prefix).")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keep-alive in seconds.")
    max_in_flight: int = Field(16, ge=1, le=65535, description="Messages handed over and not yet "
                               "acknowledged, at most.")

    @field_validator("host")
    @classmethod
    def _bare_host(cls, v: str) -> str:
        if "://" in v or "/" in v:
            raise ValueError(f"{v!r}: give the host name; TLS is the tls: section (and the port is port:)")
        if not v.strip():
            raise ValueError("must not be empty")
        return v


def read_password_file(path: str | os.PathLike, setting: str) -> str:
    """A password from its file: the first line without its line ending ($VARIABLES expanded, so
    ${CREDENTIALS_DIRECTORY}/mqtt-password works with systemd's LoadCredential=). ConfigError (a
    ValueError) naming the setting and the path when it cannot be read."""
    source = Path(os.path.expandvars(str(path)))
    text = read_text(source, f"{setting} {source}")
    return text.splitlines()[0] if text else ""
