"""One zone database for the whole fleet (issue 27 item 1): every zone comes from the tzdata
package pyjob depends on, whatever zone files the OS has.

The tests build an OS zone directory that disagrees with the package (its America/Vancouver is
the package's Asia/Tokyo, +09:00 all year) and point PYTHONTZPATH at it, the directory
``zoneinfo.ZoneInfo`` reads before the package. In July 2026 Vancouver is on PDT (-07:00) in every
tzdata release, so 09:00 there is 16:00Z; the OS directory would make it 00:00Z.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import tzdata
from pyjob.core.zones import get_zone, system_zone_name, zone_names

from .conftest import pyjob_exe
from .runproc import PyjobRun

VANCOUVER_9_UTC = "2026-07-01T16:00:00Z"  # 09:00 PDT


def _bundled_bytes(key: str) -> bytes:
    return resources.files("tzdata.zoneinfo").joinpath(*key.split("/")).read_bytes()


@pytest.fixture
def os_zones(tmp_path: Path) -> Path:
    """An OS zone directory whose America/Vancouver is Tokyo, with a zone the package lacks."""
    root = tmp_path / "usr" / "share" / "zoneinfo"
    for key, source in [
        ("America/Vancouver", "Asia/Tokyo"),
        ("Mars/Olympus", "UTC"),
        ("UTC", "UTC"),
    ]:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_bundled_bytes(source))
    # The directory really disagrees, so the tests below cannot pass by accident.
    with (root / "America/Vancouver").open("rb") as f:
        os_vancouver = ZoneInfo.from_file(f, key="America/Vancouver")
    assert datetime(2026, 7, 1, 9, tzinfo=os_vancouver).utcoffset().total_seconds() == 9 * 3600  # type: ignore[union-attr]
    return root


def pyjob(args: list[str], os_zones: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pyjob_exe(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "PYTHONTZPATH": str(os_zones), **env},
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["0 9 * * *", "--tz", "America/Vancouver"], {"TZ": "UTC"}),
        (["CRON_TZ=America/Vancouver 0 9 * * *"], {"TZ": "UTC"}),
        (["TZ=America/Vancouver 0 9 * * *"], {"TZ": "UTC"}),
        (["daily at 09:00 tz America/Vancouver"], {"TZ": "UTC"}),
        (["every 24h align offset 9h", "--tz", "America/Vancouver"], {"TZ": "UTC"}),
        (["0 9 * * *"], {"PYJOB_TZ": "America/Vancouver", "TZ": "UTC"}),
        (["0 9 * * *"], {"TZ": "America/Vancouver"}),
        (["0 9 * * *"], {"TZ": ":America/Vancouver"}),
        (["0 9 * * *"], {"TZ": "{os}/America/Vancouver"}),  # TZ as a path into the OS's files
        (["0 9 * * *"], {"TZ": "{os}/posix/America/Vancouver"}),
    ],
    ids=[
        "tz-option",
        "cron-tz",
        "tz-prefix",
        "calendar",
        "aligned-grid",
        "pyjob-tz",
        "system-tz",
        "system-tz-colon",
        "system-tz-path",
        "system-tz-posix-path",
    ],
)
def test_every_zone_comes_from_the_package_not_the_os(
    os_zones: Path, args: list[str], env: dict[str, str]
) -> None:
    env = {k: v.replace("{os}", str(os_zones)) for k, v in env.items()}
    proc = pyjob(
        ["next", *args, "--from", "2026-07-01T00:00Z", "-n", "1", "--format", "json"],
        os_zones,
        **env,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ticks"][0]["utc"] == VANCOUVER_9_UTC, doc
    assert doc["ticks"][0]["local"].endswith("T09:00:00-07:00"), doc


def test_a_zone_only_the_os_has_is_unknown(os_zones: Path) -> None:
    proc = pyjob(["next", "0 9 * * *", "--tz", "Mars/Olympus"], os_zones, TZ="UTC")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (
        "Error: Invalid value for '--tz': unknown time zone 'Mars/Olympus' (use an IANA name "
        "like Europe/Berlin or UTC)\n"
    )


@pytest.mark.slow
def test_run_fires_by_the_package_zone(os_zones: Path, tmp_path: Path) -> None:
    run = PyjobRun(
        ["-s", "0 9 * * *", "--tz", "America/Vancouver", "--lock", "none", "--", "true"],
        tmp_path,
        env={"PYTHONTZPATH": str(os_zones)},
    )
    try:
        tick = run.wait_for("next-tick")[0]["tick"]
    finally:
        run.stop()
    instant = datetime.fromisoformat(tick.replace("Z", "+00:00"))
    local = instant.astimezone(get_zone("America/Vancouver"))
    assert (local.hour, local.minute) == (9, 0), tick


def test_version_names_the_zone_database() -> None:
    proc = subprocess.run([*pyjob_exe(), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout == f"pyjob, version 0.1.0 (tzdata {tzdata.IANA_VERSION})\n"


def test_zone_names_are_the_packages() -> None:
    names = zone_names()
    listed = resources.files("tzdata").joinpath("zones").read_text().split()
    assert names == sorted(listed)
    assert "Europe/Berlin" in names and "localtime" not in names


def test_a_copied_or_unpickled_zone_is_still_the_package_zone(os_zones: Path) -> None:
    """``ZoneInfo`` pickles a zone by its key and looks the key up in the OS's files first."""
    code = (
        "import copy, pickle, sys\n"
        "from datetime import datetime\n"
        "from pyjob.core.zones import get_zone\n"
        "zone = get_zone('America/Vancouver')\n"
        "moment = datetime(2026, 7, 1, 9, tzinfo=zone)\n"
        "for z in (pickle.loads(pickle.dumps(zone)), copy.deepcopy(moment).tzinfo, zone):\n"
        "    print(z is zone, datetime(2026, 7, 1, 9, tzinfo=z).utcoffset())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONTZPATH": str(os_zones)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["True -1 day, 17:00:00"] * 3


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"TZ": ":/usr/share/zoneinfo/posix/Asia/Tokyo"}, "Asia/Tokyo"),
        ({"TZ": "/usr/share/zoneinfo/right/America/Vancouver"}, "America/Vancouver"),
    ],
)
def test_system_zone_name_of_a_posix_or_right_path(env: dict[str, str], name: str) -> None:
    assert system_zone_name(env) == name
    assert datetime(2026, 1, 1, tzinfo=UTC).astimezone(get_zone(name)).tzinfo is get_zone(name)


# ------------------------------------------------------------------ the fleet's zone databases


def _fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pyjob_exe(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC", "NO_COLOR": "1"},
    )


def _status_instances(url: str) -> tuple[dict[str, Any], str]:
    proc = _fleet("status", "--lock", url, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    jobs = {j["job"]: j for j in json.loads(proc.stdout)["jobs"]}
    found = jobs.get("nightly", {"instances": []})["instances"]
    return {i["instance"]: i for i in found}, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fleet_lock_url", ["file", "redis"], indirect=True)
def test_status_and_check_clock_warn_of_two_zone_databases_in_one_fleet(
    fleet_lock_url: str, tmp_path: Path
) -> None:
    from pyjob.core.backends import open_backend
    from pyjob.core.records import InstanceInfo, JobInfo

    from .servers import free_udp_port

    url = fleet_lock_url
    args = ["-s", "0 3 * * *", "--lock", url, "--name", "nightly", "--instance-id", "new"]
    run = PyjobRun([*args, "--", "true"], tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "new" not in (seen := _status_instances(url)[0]):
            assert time.monotonic() < deadline, "the instance never registered"
            time.sleep(0.2)
        assert seen["new"]["tzdata"] == tzdata.IANA_VERSION
        check = [*("check-clock", "--lock", url, "--server", f"127.0.0.1:{free_udp_port()}")]
        check += ["--samples", "1", "--timeout", "200ms"]
        # One release in the fleet and on this host: nothing to say.
        assert "zone databases" not in _status_instances(url)[1]
        assert "zone databases" not in _fleet(*check).stderr

        backend = open_backend(url)
        try:
            store = backend.records()
            assert store is not None
            old = InstanceInfo("old", "old-host", 1, "0.1.0", tzdata="2025b")
            old.seen_us = int(time.time() * 1e6)
            store.register([JobInfo("nightly", "CRON_TZ=UTC 0 3 * * *", "UTC", "true")], old)
        finally:
            backend.close()
        seen, said = _status_instances(url)
        assert {n: i["tzdata"] for n, i in seen.items()} == {
            "new": tzdata.IANA_VERSION,
            "old": "2025b",
        }
        assert said.startswith(
            "warning: instances of this fleet compute ticks with different zone databases "
            f"(tzdata 2025b on old; tzdata {tzdata.IANA_VERSION} on new)"
        ), said
        said = _fleet(*check).stderr
        assert (
            "warning: instances of this fleet compute ticks with different zone databases "
            f"(tzdata 2025b on old; tzdata {tzdata.IANA_VERSION} on this host, new)"
        ) in said, said
    finally:
        assert run.stop() == 0
