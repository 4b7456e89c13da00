"""Real Redis, PostgreSQL, etcd and chronyd servers for the tests (localservers, shared with the
benchmarks), with the tests' policy for a missing binary: a skip on a developer's machine, with
the reason; a failure under CI=true (.ci/run installs the servers).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import pytest

import localservers
from localservers import (
    FAKETIME_LIB,
    ChronyServer,
    EtcdServer,
    Missing,
    PostgresServer,
    RedisServer,
    _wait_port,
    free_port,
    free_udp_port,
)

CI = os.environ.get("CI") == "true"

P = ParamSpec("P")
R = TypeVar("R")


def _skip_or_fail(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Missing as e:
            if CI:
                pytest.fail(f"{e}: .ci/run should have installed it")
            pytest.skip(str(e))

    return wrapper


need = _skip_or_fail(localservers.need)
faketime_env = _skip_or_fail(localservers.faketime_env)
start_chronyd = _skip_or_fail(localservers.start_chronyd)
start_redis = _skip_or_fail(localservers.start_redis)
start_postgres = _skip_or_fail(localservers.start_postgres)
start_etcd = _skip_or_fail(localservers.start_etcd)

__all__ = [
    "CI",
    "FAKETIME_LIB",
    "ChronyServer",
    "EtcdServer",
    "PostgresServer",
    "RedisServer",
    "_wait_port",
    "faketime_env",
    "free_port",
    "free_udp_port",
    "need",
    "start_chronyd",
    "start_etcd",
    "start_postgres",
    "start_redis",
]
