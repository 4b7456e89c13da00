"""Checking a lock URL before anything is opened: a bad one is a usage error (exit 2) that names
the bad part, never a traceback or a silent default (``redis://host/abc`` is not database 0)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import InputError
from ..hosts import host_problem
from .common import redact

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PORT = re.compile(r"[0-9]{1,5}")
_DB = re.compile(r"[0-9]{1,9}")
# Query options of a Redis URL that pyjob passes on; the timeouts and retries are its own.
REDIS_OPTIONS = frozenset(
    {"db", "client_name", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
)


def _short(text: str, limit: int = 120) -> str:
    """``text`` for a one-line message: a 70,000-character host is not echoed whole."""
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


def check_lock_url(url: str) -> None:
    """Raise InputError for a lock URL that `run` would refuse before connecting: the one check
    that `--lock`, a jobs file's ``lock`` key and `validate --file` share, and that
    open_backend makes again before it opens anything."""
    if url in ("", "none"):
        return
    check_control(url)
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise InputError(
            f"bad lock URL '{_short(redact(url))}' (file:PATH, nfs:PATH, redis://HOST, "
            "postgresql://HOST/DB, etcd://HOST:PORT or none)",
            source=url,
            pos=0,
            length=len(url),
        )
    if scheme in ("file", "nfs"):
        if not (rest[2:] if rest.startswith("//") else rest):
            raise InputError(
                f"{scheme}: needs a directory, like {scheme}:/var/lib/pyjob", source=url, pos=0
            )
        return
    if scheme in ("redis", "rediss", "postgresql", "postgres"):
        check_server_url(url, scheme)
        return
    if scheme in ("etcd", "etcds"):
        parse_etcd_url(url)
        return
    raise InputError(
        f"unknown lock backend '{_short(scheme)}:' (supported: file:PATH, nfs:PATH, redis://, "
        "rediss://, postgresql://, etcd://, none)",
        source=url,
        pos=0,
        length=len(scheme) + 1,
    )


def _bad(url: str, message: str, part: str | None = None) -> InputError:
    shown = redact(url)
    pos = shown.find(part) if part else -1
    return InputError(
        message,
        source=shown,
        pos=max(pos, 0),
        length=len(part) if part and pos >= 0 else len(shown),
    )


def check_control(url: str) -> None:
    m = _CONTROL.search(url)
    if m:
        raise InputError(
            f"bad lock URL: control character {m.group()!r} at position {m.start()} "
            "(a lock URL is one line of printable text)",
            pos=m.start(),
        )


def check_server_url(url: str, scheme: str) -> None:
    """redis://, rediss://, postgresql:// and postgres:// URLs: host, port, database."""
    check_control(url)
    shown = redact(url)
    try:
        parts = urlsplit(url)
    except ValueError as e:
        netloc = url.split("//", 1)[-1].split("/", 1)[0]
        raise _bad(
            url,
            f"bad host in lock URL '{shown}': {e} (an IPv6 address is written in brackets, "
            f"like {scheme}://[::1]:PORT/…)",
            redact(f"{scheme}://{netloc}")[len(scheme) + 3 :] or None,
        ) from e
    hostports = parts.netloc.rpartition("@")[2]
    postgres = scheme.startswith("postgres")
    for hostport in hostports.split(",") if postgres else [hostports]:
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else None
            if rest and port is None:
                raise _bad(url, f"bad host '{hostport}' in lock URL '{shown}'", hostport)
        else:
            host, sep, port_text = hostport.rpartition(":")
            port = port_text if sep else None
            if not sep:
                host = hostport
        if port is not None and not (_PORT.fullmatch(port) and 0 < int(port) < 65536):
            raise _bad(
                url, f"bad port '{port}' in lock URL '{shown}' (a number, 1-65535)", f":{port}"
            )
        if "[" in host or "]" in host:
            raise _bad(url, f"bad host '{hostport}' in lock URL '{shown}'", hostport)
        problem = host_problem(unquote(host)) if host and not host.startswith("%2F") else None
        if problem:
            raise _bad(url, f"bad host in lock URL '{_short(shown)}': {problem}", host)
    if postgres:
        _check_libpq(url, shown)
    else:
        _check_redis(url, parts.path, parts.query, shown)


def _check_redis(url: str, path: str, query: str, shown: str) -> None:
    db = path[1:] if path.startswith("/") else path
    if db and not _DB.fullmatch(db):
        raise _bad(
            url,
            f"bad Redis database '{db}' in lock URL '{shown}' (a number, like redis://HOST:6379/0)",
            db,
        )
    try:
        options = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as e:
        raise _bad(url, f"bad query '{query}' in lock URL '{shown}': {e}", query) from e
    for name, value in options:
        if name not in REDIS_OPTIONS:
            raise _bad(
                url,
                f"unknown option '{name}' in lock URL '{shown}' (Redis URLs take "
                f"{', '.join(sorted(REDIS_OPTIONS))})",
                name,
            )
        if name == "db" and not _DB.fullmatch(value):
            raise _bad(url, f"bad Redis database '{value}' in lock URL '{shown}' (a number)", value)
        if name == "db" and db:
            raise _bad(url, f"lock URL '{shown}' names its database twice (path and ?db=)", name)


def _check_libpq(url: str, shown: str) -> None:
    """PostgreSQL's own parser decides (when psycopg is installed; without it the backend says
    what to install)."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _bad(url, f"bad PostgreSQL URL '{shown}': {redact(reason)}") from e
    # libpq checks these only when it connects, and its refusal then is a "backend
    # unreachable" (exit 5) for what is a typo in the URL (exit 2).
    for name, allowed in _LIBPQ_CHOICES.items():
        value = params.get(name)
        if value is not None and str(value) not in allowed:
            raise _bad(
                url,
                f"bad {name} '{value}' in lock URL '{shown}' (one of {', '.join(allowed)})",
                f"{name}={value}",
            )


_LIBPQ_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
}


ETCD_PORT = 2379
_ETCD_PREFIX = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def parse_etcd_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """``etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX]``: the endpoints, tried in turn, and the
    key prefix (``pyjob`` by default)."""
    check_control(url)
    shown = redact(url)
    scheme, _, rest = url.partition("://")
    if scheme == "etcds":
        raise _bad(
            url,
            f"lock URL '{shown}': etcd over TLS (etcds://) is not supported yet; use etcd:// "
            "on a trusted network, or through a TLS tunnel ending on this host",
            "etcds",
        )
    netloc, slash, path = rest.partition("/")
    if "@" in netloc or "?" in rest or "#" in rest:
        raise _bad(
            url,
            f"lock URL '{shown}': etcd URLs take no user, password or options "
            "(etcd://HOST:PORT[,HOST:PORT...][/PREFIX])",
        )
    endpoints = [_etcd_endpoint(url, shown, hostport) for hostport in netloc.split(",")]
    prefix = path.strip("/") if slash else "pyjob"
    if not _ETCD_PREFIX.fullmatch(prefix):
        raise _bad(
            url,
            f"bad key prefix '{path}' in lock URL '{shown}' (letters, digits, '.', '_', '-', "
            "in parts separated by '/', like etcd://HOST:2379/team/pyjob)",
            path or None,
        )
    return endpoints, prefix


def _etcd_endpoint(url: str, shown: str, hostport: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else None
        if tail and port is None:
            raise _bad(url, f"bad host '{hostport}' in lock URL '{shown}'", hostport or None)
    else:
        host, sep, port_text = hostport.rpartition(":")
        port = port_text if sep else None
        if not sep:
            host = hostport
    if port is not None and not (_PORT.fullmatch(port) and 0 < int(port) < 65536):
        raise _bad(url, f"bad port '{port}' in lock URL '{shown}' (a number, 1-65535)", f":{port}")
    problem = host_problem(host) if "[" not in host and "]" not in host else "brackets"
    if problem:
        raise _bad(url, f"bad host in lock URL '{_short(shown)}': {problem}", host or None)
    return host, ETCD_PORT if port is None else int(port)
