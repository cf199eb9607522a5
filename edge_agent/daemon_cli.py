"""`edge-agent run` and `edge-agent check-config` (the gateway daemon). Registered by cli.py."""


def register(subparsers) -> None:
    """Add the daemon's sub-commands to the edge-agent parser (filled in by the daemon work)."""
