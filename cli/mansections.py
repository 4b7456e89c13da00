"""Hand-written parts of the man pages; docgen adds NAME, SYNOPSIS and OPTIONS from the CLI.

Each page has DESCRIPTION, EXAMPLES, EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO. Text is plain
(docgen escapes it for roff); a line starting with "$ " is an example command.
"""

from __future__ import annotations

from typing import TypedDict


class Page(TypedDict):
    summary: str
    description: list[str]  # paragraphs
    examples: list[tuple[str, str]]  # (what it does, the command)


EXIT_STATUS = [
    ("0", "success; run stopped gracefully (SIGTERM, SIGHUP, one Ctrl-C)"),
    (
        "1",
        "something failed: a run failed (when run ends by itself), validate --strict found "
        "warnings, check-clock found an offset or skew over its limit (nagios: WARNING), or "
        "history, pause, resume or trigger were given an unknown job (trigger: one paused, or "
        "that no live instance serves)",
    ),
    (
        "2",
        "usage: a bad option, schedule, duration, time or zone (check-clock --format nagios: "
        "CRITICAL)",
    ),
    (
        "3",
        "the clock could not be measured: no usable NTP reply (run --require-clock, "
        "check-clock; nagios: UNKNOWN)",
    ),
    ("4", "run refused to start: the clock offset is over the limit"),
    ("5", "the lock backend is unreachable or misconfigured at start"),
    ("130", "interrupted (Ctrl-C; for run, a second Ctrl-C)"),
]

ENVIRONMENT = [
    ("PYJOB_TZ", "the zone of schedules given no --tz and no CRON_TZ="),
    ("PYJOB_LOCK", "the lock backend of run and check-clock (--lock)"),
    (
        "PYJOB_NTP_SERVERS",
        "NTP servers, separated by spaces or commas, for run and check-clock (default "
        "pool.ntp.org)",
    ),
    ("PYJOB_NO_CLOCK_CHECK", "set to 1: run does not measure the clock (--no-clock-check)"),
    ("PYJOB_PING_URL", "the URL run pings at each run's start and end (--ping)"),
    ("PYJOB_<COMMAND>_<OPTION>", "any option, e.g. PYJOB_NEXT_COUNT=10"),
    ("TZ", "the system zone, when PYJOB_TZ is not set"),
    ("XDG_RUNTIME_DIR", "where the default file lock directory is created (pyjob/)"),
    ("NO_COLOR", "no colour in tables and logs"),
]

FILES = [
    (
        "$XDG_RUNTIME_DIR/pyjob/, ~/.local/state/pyjob/",
        "the default lock directory of run (mode 0700): claims, fences and run leases per job",
    ),
]

PAGES: dict[str, Page] = {
    "": {
        "summary": "run commands on schedules, exactly once per tick across machines",
        "description": [
            "pyjob runs shell commands on schedules, on one machine or many, so that each "
            "scheduled run happens exactly once and at the right instant. It reads cron "
            "expressions (5 fields, or 6 with seconds first) and phrases such as 'every 5m "
            "align', 'daily at 09:00' or 'once at 2026-12-24T18:00', handles time zones and DST "
            "as Debian cron does, and coordinates instances through a lock backend.",
            "Every command that takes a schedule accepts the same text, or the equivalent "
            "options (--every 5m --align).",
            "Cron day fields: L (last day), LW (last weekday) and 15W (the weekday nearest the "
            "15th, also in lists: 1W,15W) in day-of-month; FRI#2 (second Friday) and 5L, FRIL or "
            "L5 (last Friday) in day-of-week; day-of-week a/n runs up to 7 = Sunday, so 7/1 is "
            "Sundays. If either day field starts with * (or ?) both must match, otherwise either "
            "may: '0 0 1 * MON#1' fires on the 1st and on the first Monday.",
            "Aligned intervals (every D align) that divide 24h are on the local wall clock, with "
            "the ticks of the equivalent cron grid: 'every 6h align' fires at 00:00, 06:00, 12:00 "
            "and 18:00 local, DST days included. A grid time a spring-forward skips fires at the "
            "gap's end when D is longer than the jump (else it is absent); one a fall-back "
            "repeats fires once when D is longer than the repeat (else at both occurrences: "
            "'every 1h align' fires 25 times on a 25-hour day). Other intervals count from the "
            "Unix epoch.",
        ],
        "examples": [
            (
                "Run a backup on every 5-minute boundary",
                "pyjob run --every 5m --align -- ./backup.sh",
            ),
            ("Preview a cron expression", 'pyjob next "0 * * * *"'),
            ("Check schedules in CI", 'pyjob validate "0 3 * * *" "every 15m align" --strict'),
            ("Start a command on the next 5-minute boundary", "pyjob align 5m --wait && ./task"),
            ("Check the clock in CI", "pyjob check-clock --interval 5m"),
        ],
    },
    "run": {
        "summary": "run a command on a schedule, with locks",
        "description": [
            "Runs CMD on every tick of the schedule, forever, or until the schedule ends "
            "(--once, --stop-at, --max-runs). Before a tick runs, the instance claims (job, tick) "
            "in the lock backend; one claimer wins and the others log who won. Claims are kept "
            "past the following tick, so an instance whose clock lags cannot run a tick twice.",
            "The command runs in its own process group with stdin from /dev/null and gets "
            "PYJOB_JOB, PYJOB_TICK, PYJOB_TICK_UNIX, PYJOB_RUN_ID, PYJOB_FENCE and PYJOB_INSTANCE. "
            "When pyjob wakes late, only the most recent passed tick runs; older ones are logged "
            "as missed. A clock stepped back never re-runs a handled tick.",
            "SIGTERM, SIGINT or (for one command, without --file) SIGHUP stops scheduling, "
            "forwards SIGTERM to running commands, waits "
            "--stop-timeout, then sends SIGKILL. A second SIGINT kills at once. If pyjob is "
            "killed outright, a small reaper process kills the process groups of its runs.",
            "With --file PATH it runs every job of a crontab (5 or 6 fields, descriptors, "
            "KEY=VALUE and CRON_TZ= lines; the rest of a line is run by $SHELL -c, /bin/sh by "
            "default; MAILTO is accepted but sends no mail; the user field of /etc/crontab and "
            "/etc/cron.d lines runs the job as that user when pyjob runs as root; a job is named "
            "after its program) or of a TOML "
            "file (*.toml: [defaults] and [jobs.NAME] tables whose keys are run's long options, "
            "plus command, shell and env) in one process, each job with its own ticks, claims "
            "and overlap state. The process is one scheduler whatever its number of jobs: one "
            "thread, and one backend connection per lock URL, shared by every job; claims due "
            "at one instant go to the backend in one round trip. Command-line options are "
            "defaults for the jobs. SIGHUP re-reads the "
            "file: unchanged jobs keep running, removed ones finish their current run and stop, "
            "and a file with problems leaves the old jobs running (a reload-failed event).",
            "Before the first tick run measures the clock against NTP (--ntp-server, "
            "PYJOB_NTP_SERVERS, else pool.ntp.org) within --clock-budget, and logs the offset. "
            "No usable reply: a warning, and it goes on (--require-clock: exit 3). An offset over "
            "--max-offset (default 1/60 of the schedule's interval, at least 100ms): exit 4 "
            "(--clock-policy warn: a warning). It re-measures every --clock-check-every on a "
            "thread of its own and logs each result. With --clock ntp ticks fire by local time "
            "plus the measured offset, so instances whose clocks disagree still fire together.",
            "--ping URL (PYJOB_PING_URL; ping in a TOML job) speaks the healthchecks.io protocol: "
            "GET URL/start?rid=UUID when a run starts and URL/<exit code>?rid=UUID when it ends "
            "(URL/0 is a success; with --log-output a POST whose body is the last 10kB of the "
            "run's output). UUID is uuid5(NAMESPACE_URL, PYJOB_RUN_ID), the same on every "
            "host, and only the instance that ran the run pings, so a monitor sees one start and "
            "one end per run across the fleet. One background thread sends them with a 3s "
            "timeout and 3 retries; a ping that still fails is a ping-failed event, never a "
            "failed run or a delayed tick.",
            "--metrics-listen HOST:PORT (:9464 for every interface) serves Prometheus metrics on "
            "/metrics and /healthz, which answers 200 while the scheduler loop runs (it wakes at "
            "least every 20s) and 503 after 60s without it, for a liveness probe. "
            "--metrics-textfile PATH writes the same metrics for node_exporter's textfile "
            "collector, atomically (a temporary file renamed over PATH), at start, every 10s and "
            "at exit. Metrics: pyjob_runs_total{job_name,result}, "
            "pyjob_run_duration_seconds{job_name} and pyjob_lateness_seconds{job_name} "
            "(histograms), pyjob_last_run_timestamp_seconds{job_name,result}, "
            "pyjob_last_success_timestamp_seconds{job_name} (the fleet's, read from the run "
            "records at each scrape and textfile write), pyjob_running{job_name}, "
            "pyjob_missed_ticks_total{job_name}, pyjob_skipped_ticks_total{job_name,reason}, "
            "pyjob_backend_errors_total{backend}, pyjob_ping_failures_total{job_name}, "
            "pyjob_schedule_interval_seconds{job_name}, pyjob_clock_offset_seconds, "
            "pyjob_loop_silence_seconds, pyjob_metrics_updated_timestamp_seconds and "
            "pyjob_info{version,pyjob_instance}. No label is named job or instance, which "
            "Prometheus sets on each target. Label values are job "
            "ids and fixed kinds, never commands or URLs. Both need pip install "
            "'pyjob[metrics]' (prometheus-client); without it, or when the port cannot be "
            "bound, run exits 2.",
        ],
        "examples": [
            ("Every 5 minutes on the boundary", "pyjob run --every 5m --align -- ./backup.sh"),
            (
                "Nightly, Berlin time, at most an hour",
                'pyjob run --cron "0 3 * * *" --tz Europe/Berlin --timeout 1h -- ./nightly.sh',
            ),
            (
                "JSON logs, output captured",
                "pyjob run --every 1m --log-output --log-format json -- ./poll",
            ),
            ("A one-time run that exits when done", "pyjob run --once 2026-12-24T18:00 -- ./greet"),
            (
                "Every job of a crontab, with a shared Redis",
                "pyjob run --file crontab --lock redis://redis:6379/0",
            ),
            (
                "Ping healthchecks.io and serve Prometheus metrics",
                "pyjob run --cron '0 3 * * *' --ping https://hc-ping.com/UUID "
                "--metrics-listen :9464 -- ./nightly.sh",
            ),
            (
                "Fire by NTP time, against the site's servers",
                "pyjob run --every 1m --align --clock ntp --ntp-server ntp1 --ntp-server ntp2 "
                "-- ./sync",
            ),
        ],
    },
    "status": {
        "summary": "every job of the fleet: last run, next tick, instances",
        "description": [
            "Reads the run records the instances of pyjob run keep in the lock backend (every "
            "backend but none keeps them) and prints one row per job: its schedule in words, its "
            "last run (when, result, duration, instance), its next tick, what runs now and "
            "where, and how many live instances serve it. Times are in the job's zone and "
            "relative. An instance that has not refreshed its heartbeat for 3.5 beats (a third "
            "of --lease-ttl each, 5 s by default, at most 10 s) has gone quiet, and a run it "
            "left running shows as lost.",
            '--format json prints {"jobs": [{"job", "schedule", "command", "zone", '
            '"last", "next_tick", "paused", "running", "instances"}]} ("paused": '
            '{"since", "by"} while pyjob pause holds the job, else null). An unreachable backend '
            "exits 5.",
        ],
        "examples": [
            ("The fleet behind a Redis", "pyjob status --lock redis://redis:6379/0"),
            ("This host's jobs", "pyjob status"),
            (
                "Jobs whose last run failed",
                "pyjob status --format json | jq '.jobs[] | "
                'select(.last.result == "failure") | .job\'',
            ),
        ],
    },
    "history": {
        "summary": "the runs of the fleet, newest first",
        "description": [
            "Prints the run records of JOB (or of every job), newest first: tick, result "
            "(success, failure, timeout, stopped, start-failed, running, lost, skipped, missed), "
            "exit code, duration, the instance that ran it and, for skipped or missed ticks, why. "
            "A tick has one record however many instances saw it. Records are kept per job up "
            "to pyjob run's --history-keep (100) and --history-max-age (30d).",
            '--format json prints {"runs": [RUN]} where RUN has job, tick, run_id, instance, '
            "fence, attempt, started, finished, duration, lateness, exit_code and result (plus "
            "reason, held_by and output_tail where present); times are ISO 8601 with the job's "
            "offset, durations in seconds. An unknown JOB exits 1, an unreachable backend 5.",
        ],
        "examples": [
            ("Did last night's backup run?", "pyjob history backup -n 3 --lock redis://redis/0"),
            ("Failures of the last day", "pyjob history --result failure --since 24h"),
        ],
    },
    "pause": {
        "summary": "stop starting a job's runs on every instance",
        "description": [
            "Marks each JOB (every job the backend knows with --all) paused in the lock "
            "backend. Every pyjob run instance sharing the backend reads its control state once "
            "a second (on Redis and PostgreSQL when told of a change, which the pause publishes), "
            "so within about a second it stops claiming the job's ticks and records "
            "each one as skipped, reason paused; it logs a paused event once, naming who paused "
            "the job (USER@HOST) and when. Runs going on are not killed, and the retries of a run "
            "started before the pause go on. The pause lives in the backend: it survives "
            "restarts, and pyjob status shows it. pyjob resume ends it.",
            "Needs a backend that keeps records (file:, nfs:, redis://, postgresql://, etcd://): "
            "--lock none exits 2. An unknown JOB exits 1, an unreachable backend 5.",
        ],
        "examples": [
            ("Stop the backup everywhere", "pyjob pause backup --lock redis://redis:6379/0"),
            ("An incident: nothing starts", "pyjob pause --all"),
        ],
    },
    "resume": {
        "summary": "start a paused job's runs again",
        "description": [
            "Ends the pause of each JOB (every job with --all): every instance runs the job's "
            "ticks again from the first one after its next control read (about a second), and "
            "logs a resumed event. Ticks that went by while the job was paused are not run. A "
            "JOB that was not paused is said so. An unknown JOB exits 1.",
        ],
        "examples": [
            ("Resume the backup", "pyjob resume backup --lock redis://redis:6379/0"),
            ("After the incident", "pyjob resume --all"),
        ],
    },
    "trigger": {
        "summary": "run a job now, once in the fleet",
        "description": [
            "Asks the instances serving JOB to run it now. They read the request within about "
            "a second and claim it as a tick of its own, so exactly one runs it: with the run id "
            "JOB-trigger-ID, its own run record, hooks and pings, and PYJOB_TRIGGERED=1 in its "
            "environment. The job's --overlap applies as for a tick. pyjob trigger waits up to "
            "10 s to see the run start and says on which instance (or why it was skipped).",
            "An unknown JOB, a paused one, or one that no live instance serves exits 1; a "
            "request no instance takes within 60 s is dropped. --lock none exits 2.",
        ],
        "examples": [
            ("Run the backup now", "pyjob trigger backup --lock redis://redis:6379/0"),
        ],
    },
    "next": {
        "summary": "show the next ticks of a schedule",
        "description": [
            "Prints the next ticks with local time, UTC and how far away they are, the normalized "
            "schedule and a one-line description. Ticks moved by a DST gap, or inside a repeated "
            "hour, are marked. --format plain prints one ISO 8601 instant per line.",
            "H fields and random intervals depend on the job id. Give the command after -- (and "
            "--shell or --name) exactly as for run, and next shows the ticks run fires for that "
            "job.",
        ],
        "examples": [
            ("The next five hourly ticks", 'pyjob next "0 * * * *"'),
            (
                "Across a DST change",
                'pyjob next "CRON_TZ=America/New_York 30 2 * * *" --from 2026-03-07 -n 3',
            ),
            ("For scripts", "pyjob next --every 1h --align --tz Asia/Kolkata --format plain"),
            ("The minute run picks for this command", 'pyjob next "H * * * *" -- ./backup.sh'),
            ("Every job of a jobs file, merged", "pyjob next --file jobs.toml -n 10"),
        ],
    },
    "validate": {
        "summary": "check schedules, with exit codes for CI",
        "description": [
            "Checks each EXPR (or the schedule options): prints the normalized form and the "
            "next tick when valid, one line per problem otherwise, naming the field and the bad "
            "token, with a caret under it on a terminal. Warns when a schedule fires at a time a "
            "DST change skips or repeats, or restricts both day-of-month and day-of-week (either "
            "then fires). With -- CMD (and --shell or --name) as for run, H fields and random "
            "intervals are those of that job.",
        ],
        "examples": [
            ("Several at once", 'pyjob validate "0 * * * *" "every 5m align"'),
            (
                "Warnings fail the build",
                'pyjob validate --strict "CRON_TZ=Europe/Berlin 30 2 * * *"',
            ),
            ("A whole crontab or jobs file", "pyjob validate --file crontab"),
        ],
    },
    "check-clock": {
        "summary": "measure the clock against NTP, peers and the lock backend",
        "description": [
            "Queries each NTP server several times (--samples), checks every reply (mode, "
            "stratum, kiss-o'-death code, leap indicator, zero transmit time, origin timestamp, "
            "source address and port, root distance) and keeps the sample with the smallest "
            "round trip. It reports offset (NTP's sign: +2.5s means this host is 2.5s behind), "
            "error bound (half the round trip), delay, stratum, reference id and leap state for "
            "each server, and why a rejected reply was rejected. Of three or more servers, one "
            "that disagrees with the majority is marked a falseticker and never chosen.",
            "The best server's offset is judged against --max-offset (default 1s) or the limit "
            "an --interval tolerates: 1/60 of it, at least 100ms (1s: 100ms, 1m: 1s, 5m: 5s, "
            "1h: 1m). The impact class is negligible below 100ms, minor to 1s, noticeable to 5s, "
            "and severe above.",
            "--peer asks other instances' hosts over NTP (they must serve it, as chronyd does "
            "with an allow line) and reports the largest skew between any two clocks, this one "
            "included, against --max-skew. --lock measures the lock backend's clock: Redis "
            "TIME, PostgreSQL clock_timestamp(), etcd's HTTP Date headers (stamped to the "
            "second; a few probes timed at its second edges narrow them, taking up to a few "
            "seconds), or the mtime of a probe file for file: and nfs:. On Linux the kernel's "
            "synchronisation state and estimated error are shown (adjtimex, read only).",
            "--format nagios prints monitoring-plugins' line, e.g. 'NTP OK: Offset 0.0012 "
            "secs|offset=0.001200s;0.100000;1.000000;', and exits 0 OK, 1 WARNING, 2 CRITICAL "
            "or 3 UNKNOWN by --warn and --crit.",
        ],
        "examples": [
            ("In a CI pipeline, for 5-minute jobs", "pyjob check-clock --interval 5m"),
            (
                "Skew across the fleet",
                "pyjob check-clock --server ntp1 --peer app2 --peer app3 --max-skew 200ms",
            ),
            ("The lock backend's clock", "pyjob check-clock --lock redis://redis:6379/0"),
            (
                "A monitoring check",
                "pyjob check-clock --format nagios --warn 100ms --crit 1s",
            ),
        ],
    },
    "align": {
        "summary": "the next boundary of an interval grid",
        "description": [
            "Prints the next boundary of the grid that run --every INTERVAL --align uses: on the "
            "local wall clock when INTERVAL divides a day (the same times as the equivalent cron "
            "grid), otherwise counted from the Unix epoch. With --wait it sleeps until the "
            "boundary and exits 0.",
        ],
        "examples": [
            ("The next 5-minute boundary", "pyjob align 5m"),
            ("Start a task on it", "pyjob align 5m --wait && ./task"),
            ("As Unix seconds", "pyjob align 15m --offset 30s --format unix"),
        ],
    },
}
