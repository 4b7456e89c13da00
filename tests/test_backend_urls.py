"""Lock URLs: a bad one is a usage error (exit 2, one ``Error:`` line naming the bad part) before
anything is opened, never a traceback or a silent default; fuzzed with hypothesis."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyjob.core.backends import open_backend, redact
from pyjob.core.errors import BackendError, InputError

from .conftest import pyjob_exe

BAD = [
    ("postgresql://[::1", "bad host in lock URL 'postgresql://[::1': Invalid IPv6 URL"),
    ("redis://127.0.0.1:6379/abc", "bad Redis database 'abc'"),
    ("redis://h/0?db=x", "bad Redis database 'x'"),
    ("redis://h/1?db=2", "names its database twice"),
    ("redis://h:99999/0", "bad port '99999'"),
    ("redis://h:\u0665/0", "bad port '\u0665'"),  # an Arabic-Indic digit is not a port
    ("postgresql://u:secret@h:5x/db", "bad port '5x'"),
    ("postgresql://u:secret@h/db?foo=1", "invalid URI query parameter"),
    ("redis://h/0?socket_timeout=5", "unknown option 'socket_timeout'"),
    ("redis://h/0\nx", "control character '\\n'"),
    ("file:/tmp/a\x1bb", "control character '\\x1b'"),
]

GOOD = [
    "redis://h",
    "redis://h:6379",
    "redis://h/0",
    "redis://:pw@h:6379/15",
    "rediss://h/0?ssl_cert_reqs=none",
    "redis://[::1]:6379/0",
    "redis://h?db=3",
    "postgresql://u:pw@h:5432/db",
    "postgresql://a:1,b:2/db",
    "postgres://h/db?connect_timeout=5",
    "postgresql:///db",
    "postgresql://[::1]:5432/db",
]


@pytest.mark.parametrize(("url", "message"), BAD)
def test_bad_lock_urls_are_input_errors_naming_the_bad_part(url: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        open_backend(url)
    assert message in str(info.value)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("url", GOOD)
def test_good_lock_urls_open_without_connecting(url: str) -> None:
    open_backend(url).close()


@pytest.mark.parametrize(("url", "message"), [BAD[0], BAD[1], BAD[6]])
@pytest.mark.parametrize("command", ["check-clock", "run"])
def test_bad_lock_url_through_the_cli_exits_2_with_one_error_line(
    command: str, url: str, message: str
) -> None:
    args = ["--server", "127.0.0.1:9", "--samples", "1"] if command == "check-clock" else []
    if command == "run":
        args = ["--every", "1s", "--no-clock-check", "--", "true"]
    proc = subprocess.run(
        [*pyjob_exe(), command, "--lock", url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "TZ": "UTC", "NO_COLOR": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: ") and message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr


def test_redact_never_fails_and_hides_passwords() -> None:
    assert redact("redis://user:pw@host:6380/2") == "redis://user:***@host:6380/2"
    assert redact("redis://:pw@[::1]:6380/2") == "redis://:***@[::1]:6380/2"
    assert redact("postgresql://u:pw@[::1") == "postgresql://u:***@[::1"


_PIECES = [
    *"abc019:/@[]?=&%.,-_ ",
    *("\u0665", "\uff15", "\n", "\x00", "\x7f", "é"),
    *("99999999999999999999", "::1", "db=", "?db=1", ":6379", "[::1]", "u:pw@"),
]
_URLISH = st.lists(st.sampled_from(_PIECES), max_size=16).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    scheme=st.sampled_from(
        ["redis://", "rediss://", "postgresql://", "postgres://", "file:", "nfs:", "", "x:"]
    ),
    rest=_URLISH,
)
def test_fuzzed_lock_urls_open_or_fail_with_a_pyjob_error(scheme: str, rest: str) -> None:
    url = scheme + rest
    try:
        backend = open_backend(url)
    except InputError as e:
        assert "\n" not in str(e)
        assert e.source is None or (e.pos is not None and 0 <= e.pos <= len(e.source))
        return
    except BackendError as e:  # pragma: no cover - no driver installed
        assert "\n" not in str(e)
        return
    assert "\n" not in backend.url
    try:
        password = urlsplit(url).password if "//" in scheme else None
    except ValueError:
        password = None
    if password:
        assert f":{password}@" not in backend.url
    backend.close()
    redact(url)
