"""Checking a host name before anything is resolved: a name no resolver can take (a label of
more than 63 characters, more than 253 in all, a character IDNA refuses) is bad input, not a
traceback from the encoder at the first connection."""

from __future__ import annotations

import ipaddress


def host_problem(host: str) -> str | None:
    """Why ``host`` (without brackets or port) cannot be looked up, or None."""
    if not host:
        return "no host"
    if not host.isprintable() or any(c.isspace() for c in host):
        return "a host has no spaces or control characters"
    try:
        ipaddress.ip_address(host.split("%", 1)[0])  # a zone id (fe80::1%eth0) is the kernel's
        return None
    except ValueError:
        pass
    if len(host) > 253:
        return f"a host name has at most 253 characters, this one {len(host)}"
    try:
        host.encode("idna")
    except UnicodeError as e:
        reason = str(e).rstrip(")").rpartition(": ")[2] or "IDNA"
        return f"not a host name: {reason}"
    return None
