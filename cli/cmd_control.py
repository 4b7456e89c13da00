"""`pyjob pause`, `pyjob resume` and `pyjob trigger`: fleet control through the lock backend
(core/control.py), from any host."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .env import get_env
from .records_view import ago, lock_option, open_store

if TYPE_CHECKING:
    from pyjob.core.control import ControlStore
    from pyjob.core.records import RecordStore

    from .env import Env

TRIGGER_WAIT = 10.0  # seconds `pyjob trigger` waits to see its run start


def _open(lock: str | None, env: Env, command: str) -> tuple[RecordStore, ControlStore, Any]:
    """The record store, the control store and the backend of ``lock``: --lock none has no
    fleet state, which is bad input for these commands (exit 2)."""
    from pyjob.core.control import control_for
    from pyjob.core.errors import InputError

    if lock == "none":
        raise InputError(
            f"pyjob {command} needs a shared lock backend (file:, nfs:, redis://, "
            "postgresql://, etcd://): --lock none keeps no fleet state"
        )
    store, backend = open_store(lock, env)
    control = control_for(backend)
    if control is None:  # a backend with records but no fleet state yet
        backend.close()
        raise InputError(f"pyjob {command} is not supported on {backend.url}")
    return store, control, backend


def _twice(read: Any) -> Any:
    """A read tried once more when it fails (one dropped connection is not an outage)."""
    from pyjob.core.errors import BackendError

    try:
        return read()
    except BackendError:
        return read()


def _who(env: Env) -> str:
    import getpass
    import socket

    user = env.environ.get("USER") or env.environ.get("LOGNAME")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "?"
    return f"{user}@{socket.gethostname()}"


def _jobs(store: RecordStore, names: tuple[str, ...], every: bool) -> list[str]:
    """The jobs named (all registered ones with --all); an unknown one: exit 1."""
    if every == bool(names):
        raise click.UsageError("give JOB names or --all (not both)")
    known = [j.job for j in _twice(store.jobs)]
    if every:
        return known
    for name in names:
        if name not in known:
            click.echo(f"Error: no such job: {name} (pyjob status lists the jobs)", err=True)
            raise click.exceptions.Exit(1)
    return list(dict.fromkeys(names))


def _all_option(f: Any) -> Any:
    return click.option("--all", "every", is_flag=True, help="Every job the backend knows.")(f)


@click.command("pause")
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@_all_option
@lock_option
def pause_cmd(jobs: tuple[str, ...], every: bool, lock: str | None) -> None:
    """Pause JOB everywhere: no instance sharing the lock backend starts a run of it until
    `pyjob resume JOB`.

    Every instance reads the backend's control state once a second (on Redis and PostgreSQL
    when told of a change, which the pause publishes), so within about a second (one read,
    plus the backend's round trip) it stops claiming the job's ticks; each tick it would have
    run is recorded as skipped, reason "paused", and it logs a `paused` event once,
    naming who paused the job and when. Runs already going on are not killed, and the retries
    of a run that started before the pause go on. The pause is kept in the backend: it
    survives restarts of every instance, and `pyjob status` shows it. A job already paused
    keeps its first pause. An unknown JOB exits 1; --lock none exits 2 (it has no fleet state).

    \b
    Examples:
      pyjob pause backup --lock redis://redis:6379/0
      pyjob pause --all          # an incident: nothing starts anywhere
    """
    from pyjob.core.instants import to_us

    env = get_env()
    store, control, backend = _open(lock, env, "pause")
    try:
        names = _jobs(store, jobs, every)
        control.pause(names, _who(env), to_us(env.clock.now()))
    finally:
        backend.close()
    for name in names:
        click.echo(f"paused {name}: no instance starts it from its next control read (1s)")


@click.command("resume")
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@_all_option
@lock_option
def resume_cmd(jobs: tuple[str, ...], every: bool, lock: str | None) -> None:
    """Resume JOB, paused by `pyjob pause`: every instance runs its ticks again, from the first
    tick after its next control read (within about a second). Ticks that went by while it was
    paused are not run (they were recorded as skipped). An unknown JOB exits 1.

    \b
    Examples:
      pyjob resume backup --lock redis://redis:6379/0
      pyjob resume --all
    """
    env = get_env()
    store, control, backend = _open(lock, env, "resume")
    try:
        names = _jobs(store, jobs, every)
        paused = _twice(control.read).paused
        control.resume(names)
    finally:
        backend.close()
    for name in names:
        click.echo(f"resumed {name}" if name in paused else f"{name} was not paused")


@click.command("trigger")
@click.argument("job")
@lock_option
def trigger_cmd(job: str, lock: str | None) -> None:
    """Run JOB now, once in the fleet, on a live instance that serves it.

    The request goes to the lock backend; the instances serving JOB read it within about a
    second and claim it as a tick of its own, so exactly one of them runs it, with a run id of
    its own (JOB-trigger-ID), its own record, hooks and pings, and PYJOB_TRIGGERED=1 in its
    environment. The job's --overlap applies as for a tick (with skip, a run going on means the
    triggered one is skipped). This command waits up to 10 s to see the run start and says
    where. No live instance serves JOB, or JOB is paused: it says so and exits 1, as for an
    unknown JOB. A request that no instance took within 60 s is dropped.

    \b
    Examples:
      pyjob trigger backup --lock redis://redis:6379/0
    """
    from pyjob.core.control import new_trigger
    from pyjob.core.instants import to_us
    from pyjob.core.records import is_quiet

    env = get_env()
    store, control, backend = _open(lock, env, "trigger")
    try:
        _jobs(store, (job,), False)
        info = next(j for j in _twice(store.jobs) if j.job == job)
        instances = _twice(store.instances)
        now_us = to_us(env.clock.now())
        live = [n for n in info.instances if not is_quiet(_instance(instances, n), now_us)]
        if not live:
            _fail(f"no live instance serves {job}: nothing would run it (pyjob status shows it)")
        pause = _twice(control.read).paused.get(job)
        if pause is not None:
            since = ago(pause.since_us, now_us)
            _fail(f"{job} is paused (by {pause.by}, {since}): pyjob resume {job} first")
        trigger = new_trigger(job, _who(env), now_us)
        control.trigger(trigger)
        record = _wait_for_run(env, store, job, trigger.run_id)
    finally:
        backend.close()
    if record is None:
        click.echo(
            f"{job}: triggered ({trigger.run_id}); no run of it seen within {TRIGGER_WAIT:g}s "
            f"(pyjob history {job} shows it when it starts)"
        )
    elif record.result == "skipped":
        click.echo(f"{job}: {trigger.run_id} skipped on {record.instance}: {record.reason}")
    else:
        click.echo(f"{job}: {trigger.run_id} started on {record.instance}")


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(1)


def _instance(instances: dict[str, Any], name: str) -> Any:
    return instances.get(name) or next(
        (i for k, i in instances.items() if k.startswith(name)), None
    )


def _wait_for_run(env: Env, store: RecordStore, job: str, run_id: str) -> Any:
    """The record of ``run_id`` once it is written, or None after TRIGGER_WAIT."""
    from pyjob.core.errors import BackendError

    deadline = env.clock.monotonic() + TRIGGER_WAIT
    while env.clock.monotonic() < deadline:
        env.clock.sleep(0.2)
        try:
            records = store.runs(job, 20)
        except BackendError:
            continue
        found = next((r for r in records if r.run_id == run_id), None)
        if found is not None:
            return found
    return None
