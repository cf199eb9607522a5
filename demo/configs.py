"""The gateway's and the backend's YAML for the demo: the same settings an operator writes (see
configs/edge.yaml, configs/backend.yaml), pointed at the demo's private broker and camera."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

DEMO_DIR = Path(__file__).resolve().parent
RULES = DEMO_DIR / "alert-rules.yaml"
GATEWAY_ID = "demo-gw"
CAMERA_ID = "plaza"
MODEL_ID = "crowd-v1"
PREFIX = "fhe-edge"


@dataclass(frozen=True)
class Ports:
    mqtt: int
    rtsp: int
    gateway_metrics: int
    backend_metrics: int


def _write(path: Path, header: str, data: dict) -> Path:
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return path


def write_edge_config(out: Path, bundle: Path, owner_pub: Path, signing_key: Path, camera_url: str, ports: Ports,
                      *, workers: int, max_fps: float) -> Path:
    cfg = {
        "gateway_id": GATEWAY_ID,
        "bundle": str(bundle),
        "owner_public_key": str(owner_pub),
        "signing_key_file": str(signing_key),     # from `edge-agent keygen` (demo/run_demo.py)
        "bundle_poll_s": 10,
        "cameras": [{"id": CAMERA_ID, "url": camera_url, "max_fps": max_fps}],
        "mqtt": {"host": "127.0.0.1", "port": ports.mqtt, "topic_prefix": PREFIX, "qos": 1},
        "workers": workers,
        # Small queue: a frame either gets a worker soon or is replaced by a newer one, so what the
        # backend sees stays close to what the camera shows right now.
        "queue_size": 1,
        "spool": {"directory": str(out / "gateway" / "spool"), "max_bytes": 64 << 20},
        "state_dir": str(out / "gateway"),
        "capture": {"open_timeout_s": 10, "read_timeout_s": 5, "reconnect_min_s": 0.5, "reconnect_max_s": 2},
        "metrics_address": f"127.0.0.1:{ports.gateway_metrics}",
        "stats_interval_s": 5,
        "log_level": "INFO",
    }
    header = ("# Written by the demo (demo/run_demo.py): the gateway daemon's configuration.\n"
              "# Plain MQTT on loopback; a real gateway uses TLS and a password (configs/edge.yaml).\n")
    return _write(out / "edge.yaml", header, cfg)


def write_backend_config(out: Path, store: Path, ports: Ports, gateway_public_key: str, *,
                         decrypt_workers: int) -> Path:
    cfg = {
        "store": str(store),
        "state_db": str(out / "backend" / "state.db"),
        "mqtt": {"host": "127.0.0.1", "port": ports.mqtt, "client_id": "demo-backend",
                 "topic_prefix": PREFIX, "session_expiry": 0},
        "checks": {"allowed_gateways": [GATEWAY_ID], "max_clock_skew": "1m",
                   "gateway_keys": {GATEWAY_ID: gateway_public_key},      # results must be signed by it
                   "gateway_cameras": {GATEWAY_ID: [CAMERA_ID]}},
        "decrypt": {"workers": decrypt_workers, "timeout": "60s"},
        # 1ms: the retained state is republished after every inference (not only when a label
        # changes), so the demo's picture gets one point per decrypted result.
        "alerts": {"rules_file": str(RULES), "state_interval": "1ms"},
        "metrics": {"listen": f"127.0.0.1:{ports.backend_metrics}"},
        "log_level": "INFO",
    }
    header = ("# Written by the demo (demo/run_demo.py): the backend service's configuration.\n"
              "# Plain MQTT on loopback; a real backend uses TLS and a password (configs/backend.yaml).\n")
    return _write(out / "backend.yaml", header, cfg)
