"""--ping: healthchecks.io's start and exit-code pings, one pair per run across the fleet, over
real HTTP on loopback; a hung or absent monitor never delays a tick."""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from pyjob.core.clock import SystemClock
from pyjob.core.events import make
from pyjob.core.pings import PingSender, ping_rid, ping_url, url_problem

from .httprec import Recorder, Request
from .runproc import PyjobRun
from .servers import RedisServer, free_port

FAIL_ON_ODD = "exit $(( ${PYJOB_TICK_UNIX%%.*} % 2 ))"


def rid_of_tick(job: str, tick: str) -> str:
    """The rid any host computes for ``job``'s run of ``tick``: from the job and tick alone."""
    stamp = datetime.fromisoformat(tick).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{job}-{stamp}"))


def by_rid(requests: list[Request]) -> dict[str | None, list[str]]:
    out: dict[str | None, list[str]] = defaultdict(list)
    for r in requests:
        out[r.rid].append(r.path)
    return out


# ------------------------------------------------------------------------------ the protocol


def test_rid_is_uuid5_of_the_run_id() -> None:
    assert ping_rid("backup-20261201T030000Z") == str(
        uuid.uuid5(uuid.NAMESPACE_URL, "backup-20261201T030000Z")
    )
    assert ping_rid("a") == ping_rid("a") != ping_rid("b")


@pytest.mark.parametrize(
    ("base", "what", "expected"),
    [
        ("https://hc-ping.com/abc", "start", "https://hc-ping.com/abc/start?rid=R"),
        ("https://hc-ping.com/abc/", "0", "https://hc-ping.com/abc/0?rid=R"),
        (
            "https://hc.example/ping/key/slug?create=1",
            "1",
            "https://hc.example/ping/key/slug/1?create=1&rid=R",
        ),
    ],
)
def test_ping_url_appends_the_path_and_keeps_the_query(base: str, what: str, expected: str) -> None:
    assert ping_url(base, what, "R") == expected


@pytest.mark.parametrize("url", ["hc-ping.com/abc", "ftp://x/y", "http://", "abc"])
def test_a_ping_url_must_be_http(url: str) -> None:
    assert url_problem(url) is not None


def _events(job: str, run_id: str, code: int) -> list[Any]:
    now = datetime.now(UTC)
    return [
        make("run-started", job, "me", now, now, run_id=run_id, pid=1, lateness=0.0),
        make(
            "run-finished",
            job,
            "me",
            now,
            now,
            run_id=run_id,
            exit_code=code,
            duration=0.1,
            lateness=0.0,
        ),
    ]


def _sender(url: str, reports: list[dict[str, Any]]) -> PingSender:
    def report(kind: str, job: str, tick: Any, **fields: Any) -> None:
        reports.append({"event": kind, "job": job, **fields})

    return PingSender({"j": url}, SystemClock(), report, backoff=(0.05, 0.05, 0.05))


def test_a_server_error_is_retried_until_the_ping_gets_through() -> None:
    rec = Recorder(statuses=[500, 503])
    reports: list[dict[str, Any]] = []
    sender = _sender(rec.url("/p"), reports)
    sender.start()
    try:
        for e in _events("j", "j-1", 0):
            sender.on_event(e)
        sender.stop()
    finally:
        rec.close()
    assert [r.path for r in rec.requests] == ["/p/start", "/p/start", "/p/start", "/p/0"]
    assert reports == []


def test_a_refused_url_is_not_retried_and_is_logged_without_the_url() -> None:
    rec = Recorder(statuses=[404])
    reports: list[dict[str, Any]] = []
    sender = _sender(rec.url("/secret-key/p"), reports)
    sender.start()
    try:
        for e in _events("j", "j-1", 3):
            sender.on_event(e)
        sender.stop()
    finally:
        rec.close()
    assert [r.path for r in rec.requests] == ["/secret-key/p/start", "/secret-key/p/3"]
    assert reports == [
        {
            "event": "ping-failed",
            "job": "j",
            "run_id": "j-1",
            "ping": "start",
            "host": "127.0.0.1",
            "attempts": 1,
            "error": "HTTP 404 Not Found",
        }
    ]


def test_jobs_without_a_ping_url_are_not_pinged_and_a_reload_adds_them() -> None:
    rec = Recorder()
    reports: list[dict[str, Any]] = []
    sender = _sender(rec.url("/j"), reports)
    sender.start()
    try:
        for e in _events("other", "other-1", 0):
            sender.on_event(e)
        sender.update({"other": rec.url("/other")})
        for e in _events("other", "other-2", 0):
            sender.on_event(e)
        # a reload that drops j's ping but keeps the job: j is pinged no more
        sender.update({"other": rec.url("/other")}, served={"j", "other"})
        for e in _events("j", "j-3", 0):
            sender.on_event(e)
        # a reload that removes "other": the run it still has going pings its end
        sender.update({}, served={"j"})
        sender.on_event(_events("other", "other-2", 0)[1])
        sender.stop()
    finally:
        rec.close()
    assert [r.path for r in rec.requests] == ["/other/start", "/other/0", "/other/0"]


def _output(job: str, run_id: str, *lines: str) -> list[Any]:
    now = datetime.now(UTC)
    return [
        make("output", job, "me", now, now, stream="stdout", line=line, run_id=run_id)
        for line in lines
    ]


def test_the_end_of_a_run_whose_output_is_captured_posts_its_tail() -> None:
    rec = Recorder()
    reports: list[dict[str, Any]] = []
    sender = _sender(rec.url("/p"), reports)
    sender.start()
    try:
        start, end = _events("j", "j-1", 1)
        for e in [start, *_output("j", "j-1", "copying", "disk full: é"), end]:
            sender.on_event(e)
        for e in _events("j", "j-2", 0):  # printed nothing: a GET, as without --log-output
            sender.on_event(e)
        sender.stop()
    finally:
        rec.close()
    got = [(r.method, r.path, r.body, r.content_type) for r in rec.requests]
    assert got == [
        ("GET", "/p/start", b"", None),
        ("POST", "/p/1", "copying\ndisk full: é\n".encode(), "text/plain; charset=utf-8"),
        ("GET", "/p/start", b"", None),
        ("GET", "/p/0", b"", None),
    ]
    assert reports == []


def test_the_output_a_ping_posts_is_the_last_10_kb_in_whole_lines() -> None:
    rec = Recorder()
    sender = _sender(rec.url("/p"), [])
    sender.start()
    try:
        lines = [f"line {n:05d}" for n in range(20_000)]  # 220 kB
        start, end = _events("j", "j-1", 0)
        for e in [start, *_output("j", "j-1", *lines), end]:
            sender.on_event(e)
        # one line longer than the bound alone, of 2-byte characters: its end, cut between two
        start, end = _events("j", "j-2", 0)
        for e in [start, *_output("j", "j-2", "x" + "é" * 30_000), end]:
            sender.on_event(e)
        sender.stop()
    finally:
        rec.close()
    posts = [r.body for r in rec.requests if r.method == "POST"]
    assert len(posts) == 2
    from pyjob.core.pings import TAIL_BYTES

    many, long = posts
    assert TAIL_BYTES - 12 < len(many) <= TAIL_BYTES
    assert many.endswith(b"line 19999\n") and many.startswith(b"line ")
    kept = many.decode().splitlines()
    assert kept == lines[-len(kept) :]  # whole lines, the last ones, in order
    assert TAIL_BYTES - 2 <= len(long) <= TAIL_BYTES
    assert long.decode() == "é" * ((len(long) - 1) // 2) + "\n"


# ------------------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_each_run_pings_its_start_then_its_exit_code_with_one_rid(tmp_path: Path) -> None:
    rec = Recorder()
    try:
        run = PyjobRun(
            [
                *("--every", "1s", "--align", "--lock", "none", "--name", "backup"),
                *("--ping", rec.url("/ping/abc?create=1"), "--shell", "--", FAIL_ON_ODD),
            ],
            tmp_path,
        )
        run.wait_for("run-finished", count=4, timeout=30)
        assert run.stop() == 0  # the pings still queued are sent before it exits
    finally:
        rec.close()
    finished = run.events("run-finished")
    pings = by_rid(rec.requests)
    for e in finished:
        rid = rid_of_tick("backup", e["tick"])
        assert pings.pop(rid) == ["/ping/abc/start", f"/ping/abc/{e['exit_code']}"], e
    assert pings == {}  # nothing else was pinged
    assert {e["exit_code"] for e in finished} == {0, 1}
    assert all(r.query["create"] == ["1"] for r in rec.requests)
    assert run.events("ping-failed") == []


@pytest.mark.slow
def test_a_real_run_with_log_output_posts_its_output_tail_at_the_end(tmp_path: Path) -> None:
    rec = Recorder()
    try:
        run = PyjobRun(
            [
                *("--every", "1s", "--max-runs", "1", "--lock", "none", "--name", "out"),
                *("--log-output", "--ping", rec.url("/hc"), "--shell", "--", "seq 1 5000; exit 3"),
            ],
            tmp_path,
        )
        assert run.wait() == 1  # its one run failed
    finally:
        rec.close()
    assert [(r.method, r.path) for r in rec.requests] == [("GET", "/hc/start"), ("POST", "/hc/3")]
    from pyjob.core.pings import TAIL_BYTES

    body = rec.requests[1].body
    assert len(body) <= TAIL_BYTES
    numbers = [int(n) for n in body.decode().splitlines()]
    assert numbers == list(range(numbers[0], 5001)) and numbers[0] > 1, numbers[:3]


@pytest.mark.slow
def test_three_instances_on_redis_ping_once_per_run_with_the_same_rid(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    import redis

    db = random.randint(1, 15)
    redis.Redis(port=redis_server.port, db=db).flushdb()
    url = f"redis://127.0.0.1:{redis_server.port}/{db}"
    rec = Recorder()
    try:
        runs = [
            PyjobRun(
                [
                    *("--every", "1s", "--align", "--lock", url, "--name", "fleetjob"),
                    *("--shell", "--", FAIL_ON_ODD),
                ],
                tmp_path,
                f"i{n}",
                env={"PYJOB_PING_URL": rec.url("/hc")},  # as a container would set it
            )
            for n in range(3)
        ]
        for r in runs:
            r.wait_for("next-tick", timeout=30)
        time.sleep(6)
        for r in runs:
            assert r.stop() == 0
    finally:
        rec.close()
    finished = [e for r in runs for e in r.events("run-finished")]
    ticks = [e["tick"] for e in finished]
    assert len(ticks) == len(set(ticks)) >= 5  # each tick ran once across the fleet
    expected = Counter(rid_of_tick("fleetjob", t) for t in ticks)
    starts = Counter(r.rid for r in rec.requests if r.path == "/hc/start")
    ends = {r.rid: r.path for r in rec.requests if r.path != "/hc/start"}
    assert starts == expected  # one start per run, whichever instance ran it
    assert len(ends) == len(expected) == len(rec.requests) - len(ticks)
    for e in finished:
        assert ends[rid_of_tick("fleetjob", e["tick"])] == f"/hc/{e['exit_code']}"
    # the instances that lost a tick's claim did not ping it
    assert sum(len(r.events("lost")) for r in runs) > 0


@pytest.mark.slow
def test_a_hung_or_absent_ping_server_never_delays_a_tick(tmp_path: Path) -> None:
    hung = Recorder(hang=True)
    down = f"http://127.0.0.1:{free_port()}/down"  # nothing listens there
    try:
        runs = [
            PyjobRun(
                [
                    *("--every", "1s", "--align", "--lock", "none", "--name", name),
                    *("--ping", url, "--", "true"),
                ],
                tmp_path,
                name,
            )
            for name, url in (("hung", hung.url("/hung")), ("down", down))
        ]
        for r in runs:
            r.wait_for("run-finished", count=6, timeout=30)
        t0 = time.monotonic()
        for r in runs:
            assert r.stop() == 0
        stopping = time.monotonic() - t0
    finally:
        hung.close()
    for r in runs:
        starts = r.events("run-started")
        # A tick waiting for the hung server would be seconds late (or missed); a loaded
        # machine's spawn delays stay well under a second.
        assert max(e["lateness"] for e in starts) < 0.5, [e["lateness"] for e in starts]
        assert r.events("missed") == []
    assert stopping < 15  # at most a few seconds each to give up on the queued pings
    assert hung.requests  # it was asked, and never answered
    failed = runs[1].events("ping-failed")
    assert failed and failed[0]["attempts"] == 4, failed
    assert "refused" in failed[0]["error"].lower(), failed
    assert all("/down" not in e["error"] for e in failed)


@pytest.mark.slow
def test_a_reload_pings_and_counts_the_jobs_it_adds(tmp_path: Path) -> None:
    rec = Recorder()
    jobs = tmp_path / "jobs.toml"

    def job(name: str) -> str:
        return (
            f'[jobs.{name}]\nevery = "1s"\nalign = true\ncommand = ["true"]\n'
            f'ping = "{rec.url("/" + name)}"\n'
        )

    jobs.write_text(job("a"))
    prom = tmp_path / "pyjob.prom"
    try:
        run = PyjobRun(
            ["--file", str(jobs), "--lock", "none", "--metrics-textfile", str(prom)], tmp_path
        )
        run.wait_for("run-finished", count=2, timeout=30)
        jobs.write_text(job("a") + job("b"))
        run.signal(signal.SIGHUP)
        (reloaded,) = run.wait_for("reloaded")
        assert reloaded["added"] == ["b"]
        deadline = time.monotonic() + 20
        while len([e for e in run.events("run-finished") if e["job"] == "b"]) < 2:
            assert time.monotonic() < deadline, "b did not run"
            time.sleep(0.1)
        assert run.stop() == 0
    finally:
        rec.close()
    b_runs = [e for e in run.events("run-finished") if e["job"] == "b"]
    pings = by_rid(rec.requests)
    for e in b_runs:
        assert pings[rid_of_tick("b", e["tick"])] == ["/b/start", "/b/0"]
    from prometheus_client.parser import text_string_to_metric_families

    got = {
        (s.labels.get("job_name"), s.labels.get("result")): s.value
        for f in text_string_to_metric_families(prom.read_text())
        for s in f.samples
        if s.name == "pyjob_runs_total"
    }
    assert got[("b", "success")] == len(b_runs)


def test_validate_finds_a_bad_ping_url_in_a_jobs_file(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[jobs.a]\nevery = "1m"\nping = "hc-ping.com/x"\ncommand = ["true"]\n')
    result = invoke(["validate", "--file", str(jobs)])
    assert result.exit_code == 2
    assert "[jobs.a]: 'ping' is not an http:// or https:// URL" in result.output
