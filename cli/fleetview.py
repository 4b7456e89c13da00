"""The fleet part of `pyjob status`: each live instance's share of the recent runs (--spread) and
its clock's offset to the backend's, judged with the impact classes of `pyjob check-clock`."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import click

from .render import table

if TYPE_CHECKING:
    from pyjob.core.records import InstanceInfo, RecordStore

    from .env import Env

# The newest records per job that the shares are counted from.
SHARE_RUNS = 50
NOT_RUN = ("skipped", "missed")  # records of ticks an instance handled but did not run


def shares(store: RecordStore, jobs: list[str]) -> dict[str, Counter[str]]:
    """By job: runs per instance among its newest SHARE_RUNS records."""
    from pyjob.core.coordinator import holder_name

    out: dict[str, Counter[str]] = {}
    for job in jobs:
        counts = out[job] = Counter()
        for r in store.runs(job, SHARE_RUNS):
            if r.result not in NOT_RUN:
                counts[holder_name(r.instance)] += 1
    return out


def instance_documents(
    instances: dict[str, InstanceInfo],
    by_job: dict[str, Counter[str]],
    listed: list[dict[str, Any]],
    now_us: int,
) -> list[dict[str, Any]]:
    """The live instances, and any other that ran some of the recent runs of the jobs listed,
    by name."""
    from pyjob.core.clockcheck import impact
    from pyjob.core.records import is_quiet

    counts: Counter[str] = Counter()
    for doc in listed:
        counts.update(by_job.get(doc["job"], {}))
    total = sum(counts.values())
    byname = {i.instance: i for i in instances.values()}
    names = {n for n, i in byname.items() if not is_quiet(i, now_us)} | set(counts)
    docs = []
    for name in sorted(names):
        info = byname.get(name)
        offset = None if info is None else info.offset
        docs.append(
            {
                "instance": name,
                "host": None if info is None else info.host,
                "live": info is not None and not is_quiet(info, now_us),
                "runs": counts[name],
                "share": round(counts[name] / total, 3) if total else None,
                "offset": offset,
                "clock": None if offset is None else impact(offset).name,
            }
        )
    return docs


def offset_text(offset: float | None) -> str:
    if offset is None:
        return "-"
    if abs(offset) < 1:
        return f"{offset * 1000:+.0f}ms"
    return f"{offset:+.2f}s"


def instance_rows(docs: list[dict[str, Any]]) -> list[list[str]]:
    total = sum(d["runs"] for d in docs)
    return [
        [
            d["instance"] + ("" if d["live"] else " (quiet)"),
            d["host"] or "-",
            f"{d['share']:.0%} ({d['runs']} of {total})" if d["share"] is not None else "-",
            offset_text(d["offset"]),
            d["clock"] or "-",
        ]
        for d in docs
    ]


def echo_instances(env: Env, docs: list[dict[str, Any]]) -> None:
    """The instances' table, after the jobs' (nothing when no instance is live)."""
    if docs:
        click.echo()
        table(env, ["INSTANCE", "HOST", "SHARE", "OFFSET", "CLOCK"], instance_rows(docs))
