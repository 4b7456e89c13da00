"""The Prometheus set-up of docs/monitoring.md, checked against a real Prometheus: its scrape
configuration and alert rules are loaded as the page prints them, a real `pyjob run` is scraped (on
--metrics-listen, and its --metrics-textfile through a stand-in for node_exporter's textfile
collector), and the page's queries and alerts are evaluated through Prometheus' HTTP API."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT
from .runproc import PyjobRun
from .servers import RedisServer, _wait_port, free_port, need

pytestmark = [pytest.mark.slow, pytest.mark.long]


def _port(event: dict[str, Any]) -> int:
    """The port a `--metrics-listen 127.0.0.1:0` server was given, from its `metrics` event."""
    port = urllib.parse.urlsplit(event["listen"]).port
    assert port, event
    return port


def readme_block(lang: str, containing: str) -> str:
    """docs/monitoring.md's ```lang block that contains ``containing``."""
    readme = (ROOT / "docs" / "monitoring.md").read_text()
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", readme, re.S | re.M)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"docs/monitoring.md: {len(found)} ```{lang} blocks with {containing!r}"
    return found[0]


class Prometheus:
    """A real Prometheus on a free loopback port, with its own configuration and storage."""

    def __init__(self, workdir: Path, config: str, rules: str) -> None:
        exe = need("prometheus")
        workdir.mkdir()
        (workdir / "rules.yml").write_text(rules)
        (workdir / "prometheus.yml").write_text(config)
        self.port = free_port()
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        _wait_port(self.port, timeout=60)
        self.wait_until(lambda: self._get("/-/ready")[0] == 200, "ready", 60)

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def api(self, path: str, **params: Any) -> Any:
        code, body = self._get(f"/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}")
        doc = json.loads(body)
        assert code == 200 and doc["status"] == "success", (path, params, doc)
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> set[tuple[str, str, str]]:
        """(alert name, job_name or instance, state) of every pending or firing alert."""
        return {
            (
                a["labels"]["alertname"],
                a["labels"].get("job_name") or a["labels"].get("instance", ""),
                a["state"],
            )
            for a in self.api("alerts")["alerts"]
        }

    def rules(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for g in self.api("rules")["groups"] for r in g["rules"]}

    def wait_until(self, ok: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            assert self.proc.poll() is None, "prometheus exited"
            assert time.monotonic() < deadline, f"prometheus: no {what} within {timeout:g}s"
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


class TextfileCollector:
    """Serves a --metrics-textfile as node_exporter's textfile collector would: the file as it
    is at each scrape, on its own target."""

    def __init__(self, path: Path) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = path.read_bytes() if path.exists() else b""
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def textfile(tmp_path: Path) -> Iterator[tuple[Path, TextfileCollector]]:
    path = tmp_path / "pyjob.prom"
    collector = TextfileCollector(path)
    yield path, collector
    collector.close()


def test_the_readmes_scrape_config_queries_and_alerts_work_in_a_real_prometheus(
    tmp_path: Path, textfile: tuple[Path, TextfileCollector]
) -> None:
    prom_file, collector = textfile
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[jobs.ok]\nevery = "1s"\ncommand = ["true"]\n\n'
        '[jobs.bad]\nevery = "1s"\ncommand = ["false"]\n'
    )
    # Port 0: the kernel picks a free port, which the `metrics` event names (a port probed free
    # beforehand can be taken by another test before pyjob binds it).
    run = PyjobRun(
        [
            *("--file", str(jobs), "--lock", f"file:{tmp_path / 'locks'}"),
            *("--metrics-listen", "127.0.0.1:0", "--metrics-textfile", str(prom_file)),
        ],
        tmp_path,
    )
    (started,) = run.wait_for("metrics", timeout=30)
    me = started["instance"]
    port = _port(started)

    # The page's scrape job, verbatim but for its targets, and a node job for the textfile.
    scrape = readme_block("yaml", "scrape_configs:")
    scrape, n = re.subn(r"targets: \[.*\]", f'targets: ["127.0.0.1:{port}"]', scrape)
    assert n == 1, scrape
    config = (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        'rule_files: ["rules.yml"]\n'
        + scrape
        + "  - job_name: node\n    static_configs:\n"
        + f'      - targets: ["127.0.0.1:{collector.port}"]\n'
    )
    prometheus = Prometheus(tmp_path / "prometheus", config, readme_block("yaml", "groups:"))
    try:
        # A job that never succeeds alerts two intervals (+ the page's 15 s) after its start,
        # and the failures at once; a 1 s job that succeeds never alerts as not succeeding.
        firing = {
            ("PyjobJobFailed", "bad", "firing"),
            ("PyjobJobNotSucceeding", "bad", "firing"),
        }
        prometheus.wait_until(lambda: prometheus.alerts() >= firing, "alerts for bad", 120)
        assert prometheus.alerts() == firing
        assert prometheus.query('count_over_time(ALERTS{job_name="ok"}[10m])') == []
        rules = prometheus.rules()
        assert set(rules) == {
            "PyjobJobFailed",
            "PyjobJobNotSucceeding",
            "PyjobDown",
            "PyjobMetricsStale",
            "PyjobLoopStuck",
        }
        assert {r["health"] for r in rules.values()} == {"ok"}, rules

        # The target's own labels stay its own: nothing renamed exported_*, and pyjob_info
        # carries the instance's name beside the target's address.
        series = prometheus.api("series", **{"match[]": '{__name__=~"pyjob_.+"}'})
        names = {label for s in series for label in s}
        assert not [n for n in names if n.startswith("exported_")], names
        info = {
            (s["metric"]["job"], s["metric"]["instance"], s["metric"]["pyjob_instance"])
            for s in prometheus.query("pyjob_info")
        }
        assert info == {
            ("pyjob", f"127.0.0.1:{port}", me),
            ("node", f"127.0.0.1:{collector.port}", me),
        }

        # Every query of docs/monitoring.md evaluates; the join on the target's instance matches.
        queries = [
            line
            for line in readme_block("promql", "pyjob_info").splitlines()
            if line and not line.startswith("#")
        ]
        assert len(queries) == 4, queries
        results = {q: prometheus.query(q) for q in queries}
        (joined,) = [q for q in queries if "group_left" in q]
        by_version = {
            (s["metric"]["job_name"], s["metric"]["version"]): float(s["value"][1])
            for s in results[joined]
        }
        assert by_version[("bad", "0.1.0")] > 0 and by_version[("ok", "0.1.0")] == 0, by_version
        for q in queries:
            assert {s["metric"].get("job_name") for s in results[q]} == {"ok", "bad"}, (q, results)

        # The textfile of a pyjob that died stops advancing, and docs/monitoring.md's alert sees it.
        stale = rules["PyjobMetricsStale"]["query"]
        assert prometheus.query(stale) == []
        run.signal(signal.SIGKILL)
        run.wait()
        prometheus.wait_until(
            lambda: ("PyjobDown", f"127.0.0.1:{port}", "pending") in prometheus.alerts(),
            "PyjobDown pending",
            60,
        )
        updated = prometheus.query('pyjob_metrics_updated_timestamp_seconds{job="node"}')
        last = float(updated[0]["value"][1])
        assert prometheus.query(stale, at=last + 30) == []
        (fired,) = prometheus.query(stale, at=last + 61)
        assert fired["metric"]["job"] == "node", fired
        # while its last pyjob_loop_silence_seconds says nothing is wrong
        silence = prometheus.query('pyjob_loop_silence_seconds{job="node"}', at=last + 61)
        assert float(silence[0]["value"][1]) < 60
    finally:
        prometheus.stop()
        run.stop()


def test_the_readmes_skipped_tick_queries_count_each_tick_of_a_fleet_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two instances on one Redis: an overlap skip is decided by the tick's claim winner alone,
    so docs/monitoring.md sums it; during an outage every instance skips every tick, so the page
    takes the minimum over the instances, where a sum would count each tick twice."""
    import redis

    db = random.randint(1, 15)
    redis.Redis(port=redis_server.port, db=db).flushdb()
    url = f"redis://127.0.0.1:{redis_server.port}/{db}"
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[jobs.slow]\nevery = "1s"\nalign = true\nshell = "sleep 1.5"\n\n'
        '[jobs.quick]\nevery = "1s"\nalign = true\ncommand = ["true"]\n'
    )
    runs = [
        PyjobRun(
            ["--file", str(jobs), "--lock", url, "--metrics-listen", "127.0.0.1:0"],
            tmp_path,
            f"i{n}",
        )
        for n in range(2)
    ]
    ports = [_port(r.wait_for("metrics", timeout=30)[0]) for r in runs]
    scrape = readme_block("yaml", "scrape_configs:")
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    scrape = re.sub(r"targets: \[.*\]", f"targets: [{targets}]", scrape)
    config = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n" + scrape
    prometheus = Prometheus(tmp_path / "prometheus", config, "groups: []\n")
    try:
        prometheus.wait_until(
            lambda: len(prometheus.query('pyjob_info{job="pyjob"}')) == 2, "both targets", 60
        )
        for r in runs:
            r.wait_for("skipped", timeout=30)  # slow's ticks come while its run goes on
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)
        time.sleep(6)
        redis_server.proc.send_signal(signal.SIGCONT)
        for r in runs:
            r.wait_for("backend-up", timeout=30)
        time.sleep(3)  # scraped after the outage
        at = time.time()
        queries = [
            line
            for line in readme_block("promql", "pyjob_info").splitlines()
            if "pyjob_skipped_ticks_total" in line and not line.startswith("#")
        ]
        assert len(queries) == 2, queries
        readme = {q: prometheus.query(q, at=at) for q in queries}
        # each instance's own count, over the same window
        raw = prometheus.query('increase(pyjob_skipped_ticks_total{job="pyjob"}[1h])', at=at)
    finally:
        prometheus.stop()
        for r in runs:
            r.stop()

    def skipped(r: PyjobRun, kind: str, job: str) -> set[str]:
        return {
            e["tick"]
            for e in r.events(kind)
            if e["job"] == job and (kind != "backend-error" or e.get("action") == "skip")
        }

    def counts(job: str, reason: str) -> list[float]:
        """Each instance's increase, smallest first."""
        return sorted(
            float(s["value"][1])
            for s in raw
            if s["metric"]["job_name"] == job and s["metric"]["reason"] == reason
        )

    overlap_q, outage_q = queries
    # overlap: each tick is skipped by one instance only, the winner of its claim: summed
    a, b = (skipped(r, "skipped", "slow") for r in runs)
    assert a and b and not a & b, (a, b)
    fleet = sum(counts("slow", "overlap"))
    (got,) = [float(s["value"][1]) for s in readme[overlap_q] if s["metric"]["job_name"] == "slow"]
    assert fleet >= 1 and got == pytest.approx(fleet), (got, fleet)
    # backend-error: each tick of the outage is skipped by both: the minimum, not the sum
    a, b = (skipped(r, "backend-error", "quick") for r in runs)
    assert len(a & b) >= 2 and len(a & b) >= 0.6 * max(len(a), len(b)), (a, b)
    low, high = counts("quick", "backend-error")
    # both counted (nearly) every tick of the outage: a sum would count each one twice
    assert low >= 2 and high <= 1.5 * low + 2, (low, high)
    (got,) = [
        float(s["value"][1])
        for s in readme[outage_q]
        if s["metric"]["job_name"] == "quick" and s["metric"]["reason"] == "backend-error"
    ]
    assert got == pytest.approx(low), (got, low, high)
