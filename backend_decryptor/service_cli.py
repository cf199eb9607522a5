"""`backend-decryptor run`, `check-config`, `alerts` (the backend service). Registered by cli.py."""


def register(subparsers) -> None:
    """Add the service's sub-commands to the backend-decryptor parser (filled in by the service work)."""
