"""The randomized fault test of the claim protocol (tests/soak.py, docs/design.md §8), briefly, on
each backend: a seeded plan of faults against three real instances, then every invariant.

``PYJOB_SOAK_SECONDS`` sets the length per backend (default 24) and ``PYJOB_SOAK_SEED`` the seed
(default: a new one each run, printed with any violation so that it can be replayed with
``python -m tests.soak --backend B --seed N``)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from localservers import Missing

from .servers import CI
from .soak import BACKENDS, soak

SECONDS = float(os.environ.get("PYJOB_SOAK_SECONDS", "24"))


@pytest.mark.long
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_faults_keep_every_invariant(backend: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("PYJOB_SOAK_SEED", random.randrange(1_000_000)))
    try:
        outcome = soak(backend, SECONDS, seed, tmp_path)
    except Missing as e:
        if CI:
            pytest.fail(f"{e}: .ci/run should have installed it")
        pytest.skip(str(e))
    assert not outcome.violations, outcome.report()
    assert outcome.checked["quiet_ticks_checked"] > 0, outcome.report()
