"""`edge-agent run` and `edge-agent check-config` (the gateway daemon). Registered by cli.py."""
from __future__ import annotations

import sys

from protected_nn.service_support import configure_logging


def register(subparsers) -> None:
    """Add the daemon's sub-commands to the edge-agent parser."""
    run = subparsers.add_parser("run", help="run the gateway daemon (foreground; systemd runs the same)",
                                description="Capture the configured cameras, run the encrypted model "
                                            "and publish the encrypted results over MQTT.")
    run.add_argument("--config", required=True, metavar="FILE", help="gateway YAML (see configs/edge.yaml)")
    run.set_defaults(func=_run)

    check = subparsers.add_parser("check-config", help="validate a gateway YAML, print every error",
                                  description="Validate FILE: every problem is printed as "
                                              "file:line: field: message. Also verifies the bundle "
                                              "signature. Exit 0 when valid, 2 otherwise.")
    check.add_argument("file", metavar="FILE")
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
    import os
    from edge_agent.config import ConfigError, read_signing_key
    if cfg.signing_key_file is not None or os.environ.get("CREDENTIALS_DIRECTORY"):
        try:
            read_signing_key(cfg)
        except ConfigError as exc:
            print(f"error: {args.file}: {exc}", file=sys.stderr)
            return 2
    from edge_agent.bundle_watch import load_model
    from edge_agent.preprocess import InputSpec, InputSpecError
    from protected_nn.bundle import load_owner_public_key
    from protected_nn.errors import ProtectedNNError
    try:
        model = load_model(cfg.bundle, load_owner_public_key(cfg.owner_public_key))
        spec = InputSpec.from_card(model.artifacts.card())
    except (ProtectedNNError, InputSpecError, OSError) as exc:
        print(f"error: {args.file}: bundle {cfg.bundle}: {exc}", file=sys.stderr)
        return 2
    cams = sum(1 for c in cfg.cameras if c.enabled)
    print(f"{args.file}: ok - gateway {cfg.gateway_id}, {cams} enabled camera(s), model "
          f"{model.model_id} (key {model.key_fingerprint}, input {spec.channels} {spec.shape}), "
          f"{cfg.workers} worker(s)")
    return 0


def _run(args) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 2
    configure_logging(cfg.log_level)
    from edge_agent.daemon import Daemon
    return Daemon(cfg).run()
