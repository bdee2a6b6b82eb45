"""Who the live page answers: ``--host``/``--port`` checked before binding, and each request's Host
header and path (``web.py`` serves; this module decides).

DNS rebinding: a web page the person visits renames its own server to 127.0.0.1 and reads the live
page as its own, sending its own name in the Host header; so only this machine's names are answered
(and, when the page is open to the network, IP addresses and the machine's host name). A page open
to the network also lives under a random key (``/KEY/``) that only the printed link holds.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import urllib.parse

from hires_nst.errors import ConfigError


def check_address(host: str, port: int) -> None:
    """``--host`` and ``--port`` before anything binds (ConfigError naming the option)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 (any free port) and 65535, got {port}")
    if not host.strip():
        raise ConfigError("--host is empty: give the address to listen on, e.g. 127.0.0.1 (this machine only) "
                          "or 0.0.0.0 (every network of this machine)")


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Access:
    """The names and port a request's Host header may give, and the key its path must start with."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        self.local = is_loopback(host)
        self.names = {"localhost", "127.0.0.1", "::1", host.lower().strip("[]")}
        if not self.local:
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.prefix = "" if self.local else "/" + secrets.token_urlsafe(16)

    def allows(self, host_header: str | None) -> bool:
        try:
            parts = urllib.parse.urlsplit("//" + (host_header or ""))
            name, port = parts.hostname or "", parts.port or 80
        except ValueError:  # a port that is no number
            return False
        return port == self.port and (name in self.names or (not self.local and _is_ip(name)))

    def route(self, path: str) -> str | None:
        """The path without the key and the query; None outside the key."""
        path = path.split("?", 1)[0]
        if not path.startswith(self.prefix + "/"):
            return None
        return path[len(self.prefix):]
