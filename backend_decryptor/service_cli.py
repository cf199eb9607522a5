"""`backend-decryptor run`, `check-config`, `alerts` (the backend service). Registered by cli.py."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from service_common.cli import configure_logging

DEFAULT_CONFIG = "/etc/backend-decryptor/backend.yaml"


def register(subparsers) -> None:
    """Add the service's sub-commands to the backend-decryptor parser."""
    default = os.environ.get("BACKEND_DECRYPTOR_CONFIG", DEFAULT_CONFIG)
    p = subparsers.add_parser(
        "run", help="run the backend service (MQTT -> checks -> decrypt -> alerts)",
        description="Receive the gateways' encrypted results from the broker, check each (gateway "
                    "signature, camera, rate, replay) before decrypting it with the store's secret "
                    "keys, turn the outputs into alerts and per-camera state on MQTT and keep the "
                    "history. Reads FILE, the alert rules file it names (alerts.rules_file), the "
                    "model store (store) and the state database (state_db or database). Runs in "
                    "the foreground until SIGTERM or Ctrl-C (systemd/backend-decryptor.service runs "
                    "the same). Exit 0 after a clean stop, 1 when the stop budget ran out with "
                    "messages not handled yet (the broker redelivers them after a restart), 2 when "
                    "FILE or anything it names cannot be used (each problem an error: line naming "
                    "file, line and setting).")
    p.add_argument("--config", required=True, metavar="FILE", help="backend YAML (see configs/backend.yaml)")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser(
        "check-config", help="validate a backend config and its alert rules",
        description="Validate FILE and the alert rules file it names (alerts.rules_file): every "
                    "problem is printed as file:line: setting: reason. Then checks what `run` "
                    "needs: the model store exists and every stored model has a valid output card, "
                    "the state database's folder can be made, the TLS, password and rules files "
                    "are readable, the metrics address is free, every rule reads an output some "
                    "model has; and warns (warning: lines) on risky values such as no TLS to a "
                    "remote broker. Prints a summary of what `run` would do. Exit 0 when `run` "
                    "can start, 2 otherwise.")
    p.add_argument("config", metavar="FILE", help="backend YAML (configs/backend.yaml is the template for "
                                                  "/etc/backend-decryptor; scripts/local-example.sh writes "
                                                  "one that passes on this machine)")
    p.set_defaults(func=cmd_check_config)

    p = subparsers.add_parser("alerts", help="list alert history from the service's state (SQLite or PostgreSQL)")
    p.add_argument("--since", default="1h", metavar="DURATION", help="how far back (30m, 1h, 2d; default 1h)")
    p.add_argument("--camera", metavar="ID", help="only this camera")
    p.add_argument("--config", default=default, metavar="FILE",
                   help=f"backend YAML naming the database (default {default}, or $BACKEND_DECRYPTOR_CONFIG)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.set_defaults(func=cmd_alerts)


def _load(path: str):
    """The config and its rules; a rules file that cannot be read is named by its setting and the
    config line that points at it (the rules file's own problems carry its own file:line)."""
    from backend_decryptor.config import load_config
    from backend_decryptor.rules_config import load_rules
    from service_common.preflight import readable, with_line
    from service_common.yaml_loader import ConfigError
    cfg = load_config(path)
    if (problem := readable("alerts.rules_file", cfg.alerts.rules_file)):
        raise ConfigError([with_line(path, problem)])
    return cfg, load_rules(cfg.alerts.rules_file)


def cmd_run(args) -> int:
    from backend_decryptor.service import Service
    from backend_decryptor.check_config import file_errors
    from service_common.preflight import address_free, with_line
    cfg, rules = _load(args.config)
    # An unreadable password or certificate file is a start-up error naming its setting and
    # path, not a raw errno after the service started (and a reconnect loop).
    problems = file_errors(cfg)
    if cfg.metrics.listen and (taken := address_free("metrics.listen", cfg.metrics.listen)):
        problems.append(taken)
    if problems:
        raise ValueError("\n".join(with_line(args.config, p) for p in problems))
    configure_logging(cfg.log_level)
    cfg.mqtt.password()
    return Service(cfg, rules).run_forever()


def cmd_check_config(args) -> int:
    import sys
    from backend_decryptor.check_config import check
    cfg, rules = _load(args.config)
    errors, warnings, models = check(cfg, rules)
    from service_common.preflight import with_line
    for line in errors:     # a rules-file problem already starts with its own file:line
        print(f"error: {line if line.startswith(str(cfg.alerts.rules_file)) else with_line(args.config, line)}",
              file=sys.stderr)
    for line in warnings:
        print(f"warning: {with_line(args.config, line)}", file=sys.stderr)
    print(f"{args.config}: {'NOT ok' if errors else 'ok'}")
    print(f"  broker {cfg.mqtt.host}:{cfg.mqtt.port} tls={'on' if cfg.mqtt.tls else 'off'} "
          f"client {cfg.mqtt.client_id} group {cfg.mqtt.shared_group} prefix {cfg.mqtt.topic_prefix}")
    print(f"  store {cfg.store}  state {cfg.describe_database()}  decrypt workers {cfg.decrypt.workers}")
    try:
        cfg.database.password()
    except ValueError as exc:
        print(f"  warning: {exc}")
    gateways = ", ".join(cfg.checks.allowed_gateways) or "NONE (every message will be rejected)"
    print(f"  allowed gateways: {gateways}")
    keys = ", ".join(cfg.checks.gateway_keys) or "NONE (every message will be rejected: unknown_gateway)"
    print(f"  gateway keys (results must be signed): {keys}")
    for gateway in cfg.checks.allowed_gateways:
        if not any(ch in gateway for ch in "*?[") and gateway not in cfg.checks.gateway_keys:
            print(f"  warning: gateway {gateway} is allowed but has no key in checks.gateway_keys: "
                  "its results will be rejected (edge-agent keygen prints the line)")
    for gateway, cameras in cfg.checks.gateway_cameras.items():
        print(f"  cameras of {gateway}: {', '.join(cameras) or 'NONE'}")
    if cfg.checks.cameras_required:
        print("  gateways without a camera list: rejected (cameras_required)")
    rate = cfg.limits.per_gateway_rate
    print(f"  per-gateway limit: {f'{rate:g} msg/s, burst {cfg.limits.per_gateway_burst}' if rate else 'NONE'}")
    print(f"  rules {cfg.alerts.rules_file}: crowd >= {rules.crowd.threshold} x{rules.crowd.consecutive}, "
          f"incident >= {rules.incident.probability} x{rules.incident.consecutive}; "
          f"{len(rules.zones)} zone(s), {len(rules.cameras)} camera override(s)")
    for line in models:
        print(f"  {line}")
    return 2 if errors else 0


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def cmd_alerts(args) -> int:
    from backend_decryptor.config import load_config
    from backend_decryptor.storage import open_storage
    from protected_nn.config_words import parse_duration
    cfg = load_config(args.config)
    since = time.time() - parse_duration(args.since)
    if not cfg.database.is_postgres and not cfg.sqlite_path().exists():
        raise ValueError(f"no alert history at {cfg.sqlite_path()} (has the service run?)")
    db = open_storage(cfg, replica=f"{cfg.mqtt.client_id}-cli")
    rows = db.alerts(since=since, camera=args.camera)
    if args.json:
        from backend_decryptor.alerts import alert_json
        for r in rows:
            print(json.dumps(alert_json(r.event, public=False)))
        return 0
    print(f"{'time (UTC)':25} {'camera':16} {'type':9} {'event':8} {'level':10} alert id")
    for r in rows:
        ev = r.event
        print(f"{_fmt_time(ev.time):25} {ev.camera:16} {ev.type:9} {ev.event:8} {ev.level:10} {ev.id}")
    counters = db.counters()
    cams = [args.camera] if args.camera else sorted(counters)
    print(f"\n{len(rows)} alert event(s) since {_fmt_time(since)}")
    for cam in cams:
        if cam in counters:
            c = counters[cam]
            print(f"camera {cam}: {c['messages']} inferences, {c['raised']} raised, {c['cleared']} cleared, "
                  f"last {_fmt_time(c['last_time'])}")
    return 0
