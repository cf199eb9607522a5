"""`edge-agent run` and `edge-agent check-config` (the gateway daemon). Registered by cli.py."""
from __future__ import annotations

import sys

from service_common.cli import configure_logging


def register(subparsers) -> None:
    """Add the daemon's sub-commands to the edge-agent parser."""
    run = subparsers.add_parser("run", help="run the gateway daemon (foreground; systemd runs the same)",
                                description="Capture the configured cameras, run the encrypted model "
                                            "and publish the encrypted results over MQTT.")
    run.add_argument("--config", required=True, metavar="FILE", help="gateway YAML (see configs/edge.yaml)")
    run.set_defaults(func=_run)

    check = subparsers.add_parser("check-config", help="validate a gateway YAML, print every error",
                                  description="Validate FILE: every problem is printed as "
                                              "file:line: field: message. Then checks what `run` "
                                              "needs: every file readable, the bundle's signature, model "
                                              "id and version, the metrics port free; and warns "
                                              "(warning: lines) on risky values, memory over the unit's "
                                              "MemoryMax and more frames than the workers can take "
                                              "(measured with one inference). Exit 0 when valid, 2 otherwise.")
    check.add_argument("file", metavar="FILE", help="gateway YAML (configs/edge.yaml is the template for "
                                                     "/etc/fhe-edge; scripts/local-example.sh writes one "
                                                     "that passes on this machine)")
    check.add_argument("--quick", action="store_true",
                       help="skip loading the model and timing one inference (no memory/fps check)")
    check.set_defaults(func=_check_config)


def _load(path: str):
    from edge_agent.config import ConfigError, load_config
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return None


def _check_config(args) -> int:
    cfg = _load(args.file)
    if cfg is None:
        return 2
    from edge_agent.check_config import check
    errors, warnings, model = check(cfg, measure=not args.quick)
    from service_common.preflight import with_line
    for line in errors:
        print(f"error: {with_line(args.file, line)}", file=sys.stderr)
    for line in warnings:
        print(f"warning: {with_line(args.file, line)}", file=sys.stderr)
    if errors:
        return 2
    cams = sum(1 for c in cfg.cameras if c.enabled)
    spec = model.spec
    measured = getattr(model, "measured", None)
    note = (f" (each ~{measured[0] / 2**20:.0f} MiB, {measured[1]:.2f} s per inference, measured)"
            if measured else "")
    print(f"{args.file}: ok - gateway {cfg.gateway_id}, {cams} enabled camera(s), model "
          f"{model.model_id} (key {model.key_fingerprint}, input {spec.channels} {spec.shape}), "
          f"{cfg.workers} worker(s){note}")
    return 0


def _run(args) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 2
    _preflight(args.config, cfg)
    configure_logging(cfg.log_level)
    from edge_agent.daemon import Daemon
    return Daemon(cfg).run()


def _preflight(path: str, cfg) -> None:
    """Before anything starts (metrics port, workers): a missing credential, an unreadable
    password file, a folder that cannot be made or a taken port is an `error:` line naming the
    file, line and setting (ValueError: run_cli prints it, no traceback)."""
    from edge_agent.config import ConfigError, read_password, read_signing_key
    from protected_nn.bundle import load_owner_public_key
    from protected_nn.errors import ProtectedNNError
    from service_common.preflight import address_free, with_line, writable_folder
    problems = []
    try:
        load_owner_public_key(cfg.owner_public_key)
    except ProtectedNNError as exc:
        problems.append(f"owner_public_key: {exc}")
    for read in (lambda: read_signing_key(cfg), lambda: read_password(cfg.mqtt)):
        try:
            read()
        except ConfigError as exc:
            problems += exc.problems
    problems += [p for p in (writable_folder("state_dir", cfg.state_dir),
                             writable_folder("spool.directory", cfg.spool.directory),
                             cfg.metrics_address and address_free("metrics_address", cfg.metrics_address)) if p]
    if problems:
        raise ValueError("\n".join(with_line(path, p) for p in problems))
