"""Checks both services' `check-config` make before `run` needs the thing: a file readable, a
folder that can be made, a listen address free, a broker on this host. Each problem names the
setting and the path/address, so the operator knows which line to fix."""
from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path

from service_common.yaml_loader import setting_line


def readable(field: str, path: Path | None) -> str | None:
    """None, or 'field path: reason' when `path` cannot be opened for reading."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return f"{field} {path}: cannot read: {exc.strerror or exc}"
    return None


def address_free(field: str, address: str) -> str | None:
    """None, or 'field host:port: address already in use' (what `run` would hit binding it)."""
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host or "0.0.0.0", int(port), type=socket.SOCK_STREAM)
        family, _, _, _, sockaddr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the HTTP server does
            s.bind(sockaddr)
    except OSError as exc:
        return f"{field} {address}: {(exc.strerror or str(exc)).lower()}"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def nearest_existing(path: Path) -> Path | None:
    """`path` itself or its closest parent that exists (what a mkdir -p would start from)."""
    return next((p for p in [Path(path), *Path(path).parents] if p.exists()), None)


def not_a_folder(field: str, path: Path, folder: Path | None = None) -> str | None:
    """None, or 'field path: cannot create: X is not a folder' when a regular file X stands where
    `folder` (default: `path` itself; for a file setting, its folder) or one of its parents must be
    made - `run` would fail there with a bare errno (File exists / Not a directory)."""
    existing = nearest_existing(Path(path) if folder is None else folder)
    if existing is not None and not existing.is_dir():
        return f"{field} {path}: cannot create: {existing} is not a folder"
    return None


def writable_folder(field: str, folder: Path) -> str | None:
    """None, or 'field folder: cannot create: reason' (made here, as `run` would make it)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{field} {folder}: cannot create: {exc.strerror or exc}"
    return None


def with_line(config: str | Path, message: str) -> str:
    """'FILE:LINE: message' when the message starts with a setting given in FILE ('mqtt.tls.ca_file
    /x: ...' -> the line of ca_file), else 'FILE: message': every problem leads to a line."""
    match = re.match(r"^([A-Za-z_][\w.]*)[\s:]", message)
    line = setting_line(config, tuple(match.group(1).split("."))) if match else None
    return f"{config}:{line}: {message}" if line else f"{config}: {message}"
