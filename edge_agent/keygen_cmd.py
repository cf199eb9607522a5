"""`edge-agent keygen --out /etc/fhe-edge/signing.key`: make this gateway's result-signing key.

Run once at install, as root: the private key file is created with mode 0600 (systemd hands it
to the service as a credential, see systemd/edge-agent.service); the public key is printed as the
line to add under the backend's checks.gateway_keys and written beside the key as KEY.pub."""
from __future__ import annotations

from pathlib import Path

from protected_nn import envelope, gateway_key
from protected_nn.errors import InputError


def add_parser(sub) -> None:
    p = sub.add_parser("keygen", help="make this gateway's Ed25519 key that signs its results",
                       description="Create the gateway's result-signing key (private key mode 0600) and "
                                   "print the public key for the backend's checks.gateway_keys.")
    p.add_argument("--out", required=True, metavar="KEY", help="private key file to create (e.g. /etc/fhe-edge/signing.key)")
    p.add_argument("--gateway-id", metavar="ID", help="gateway id, to print the backend config line ready to paste")
    p.add_argument("--force", action="store_true", help="replace an existing key (the backend must then get the new public key)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.gateway_id is not None and not envelope.valid_field(args.gateway_id):
        raise InputError(f"--gateway-id {args.gateway_id!r}: expected 1..64 chars of [A-Za-z0-9._-]")
    from protected_nn.npy_files import output_error, write_file
    out = Path(args.out)
    key = gateway_key.generate()
    existed = out.exists()
    try:
        gateway_key.write_private_key(key, out, overwrite=args.force)
    except OSError as e:
        raise output_error("--out", out, e) from None
    public = gateway_key.public_key_text(key)
    try:
        write_file(out.with_name(out.name + ".pub"), (public + "\n").encode(), "public key (beside --out)")
    except InputError:
        if not existed:
            out.unlink(missing_ok=True)   # a key nobody was told the public half of
        raise
    print(f"wrote {out} (mode 0600) and {out}.pub")
    print("add to the backend's configuration (checks.gateway_keys):")
    print(f"    {args.gateway_id or '<gateway id>'}: {public}")
    return 0
