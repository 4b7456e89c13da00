"""Every form the schedule grammar accepts, in correct English (issue 19): what `validate` and
`next` print after "means:"/"Means:", through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from click.testing import Result

CASES = [
    ("* * * * *", "every minute (UTC)"),
    ("*/5 * * * *", "every 5 minutes (UTC)"),
    ("0 * * * *", "at minute 0 past every hour (UTC)"),
    ("@hourly", "at minute 0 past every hour (UTC)"),
    ("@daily", "at 00:00 every day (UTC)"),
    ("@midnight", "at 00:00 every day (UTC)"),
    ("@weekly", "at 00:00 on Sunday (UTC)"),
    ("@monthly", "at 00:00 on the 1st (UTC)"),
    ("@yearly", "at 00:00 on the 1st in January (UTC)"),
    ("@annually", "at 00:00 on the 1st in January (UTC)"),
    ("@every 90s", "every 1m30s, counted from when pyjob run starts"),
    ("*/10 * * * * *", "every 10 seconds (UTC)"),
    ("30 * * * * *", "at second 30 of every minute (UTC)"),
    ("15 30 9 * * *", "at 09:30:15 every day (UTC)"),
    ("0 0 9 * * MON-FRI", "at 09:00 on Monday to Friday (UTC)"),
    ("H H * * *", "once a day, at a minute and hour hashed from the job id (UTC)"),
    ("H * * * *", "at a minute hashed from the job id past every hour (UTC)"),
    ("H/15 * * * *", "every 15 minutes, from a start hashed from the job id (UTC)"),
    (
        "H(0-29) 3 * * *",
        "at a minute from 0 to 29 hashed from the job id past hour 3 every day (UTC)",
    ),
    ("23 0-20/2 * * *", "at minute 23 past every 2nd hour from 0 to 20 (UTC)"),
    ("0 9 * * MON-FRI", "at 09:00 on Monday to Friday (UTC)"),
    ("0 9-17 * * *", "at minute 0 past every hour from 9 to 17 (UTC)"),
    (
        "*/15 9-17 * * 1-5",
        "every 15 minutes during every hour from 9 to 17 on Monday to Friday (UTC)",
    ),
    ("0,30 8,12,16 * * *", "at minutes 0 and 30 past hours 8, 12 and 16 every day (UTC)"),
    ("0 */6 * * *", "at minute 0 past every 6th hour (UTC)"),
    ("0-10 * * * *", "every minute from 0 to 10 (UTC)"),
    ("5/15 * * * *", "every 15 minutes from minute 5 (UTC)"),
    ("*/10 2 * * *", "every 10 minutes during hour 2 (UTC)"),
    ("0 0 1 * *", "at 00:00 on the 1st (UTC)"),
    ("0 0 L * *", "at 00:00 on the last day of the month (UTC)"),
    ("0 0 LW * *", "at 00:00 on the last weekday of the month (UTC)"),
    ("0 0 15W * *", "at 00:00 on the weekday nearest the 15th (UTC)"),
    ("0 0 * * MON#1", "at 00:00 on the 1st Monday of the month (UTC)"),
    ("0 0 * * 5L", "at 00:00 on the last Friday of the month (UTC)"),
    ("0 0 1,15 * MON", "at 00:00 on the 1st and the 15th or on Monday (UTC)"),
    ("0 0 */2 * MON", "at 00:00 on every 2nd day of the month when it is Monday (UTC)"),
    ("0 0 1 */3 *", "at 00:00 on the 1st in every 3rd month (UTC)"),
    ("0 0 1 JAN-MAR *", "at 00:00 on the 1st in January to March (UTC)"),
    ("0 12 * * 1/2", "at 12:00 on Monday, Wednesday, Friday and Sunday (UTC)"),
    ("0 0 * * H", "at 00:00 on a day of the week hashed from the job id (UTC)"),
    ("0 0 ? * SUN", "at 00:00 on Sunday (UTC)"),
    ("CRON_TZ=Europe/Berlin 0 9 * * *", "at 09:00 every day (Europe/Berlin)"),
    ("every 5m", "every 5m, counted from when pyjob run starts"),
    ("every 5m align", "every 5m on the local wall clock from midnight (UTC)"),
    ("every 6h align", "every 6h on the local wall clock from midnight (UTC)"),
    (
        "every 1h align offset 15m",
        "every 1h on the local wall clock from midnight (UTC), shifted by 15m",
    ),
    ("every 7m align", "every 7m on the grid from the Unix epoch"),
    ("every 1m..5m", "at random intervals of 1m to 5m, a new one drawn after each tick"),
    ("daily at 09:00", "at 09:00 every day (UTC)"),
    ("daily at 09:00,17:30 interval 2", "at 09:00 and 17:30 every 2 days (UTC)"),
    ("weekly on MON,FRI at 08:00", "at 08:00 on Monday and Friday, every week (UTC)"),
    ("weekly on MON at 08:00 interval 2", "at 08:00 on Monday, every 2 weeks (UTC)"),
    ("monthly on 1,-1 at 00:00", "at 00:00 on the 1st and last day, every month (UTC)"),
    ("monthly on 15 at 12:00 interval 3", "at 12:00 on the 15th day, every 3 months (UTC)"),
    ("once at 2027-01-01T10:00", "once, at 2027-01-01T10:00:00Z"),
    (
        "once at 2027-01-01T10:00,2027-02-01T10:00",
        "once each at 2027-01-01T10:00:00Z and 2027-02-01T10:00:00Z",
    ),
    (
        "every 5m start-at 2027-01-01T00:00 stop-at 2027-02-01T00:00",
        "every 5m, counted from 2027-01-01T00:00:00Z, until 2027-02-01T00:00:00Z",
    ),
    ("daily at 09:00 tz Europe/Berlin", "at 09:00 every day (Europe/Berlin)"),
]


@pytest.mark.parametrize(("expr", "means"), CASES)
def test_every_schedule_form_reads_as_english(
    invoke: Callable[..., Result], expr: str, means: str
) -> None:
    result = invoke(["validate", expr, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["schedules"][0]["description"] == means


def test_next_prints_the_same_words(invoke: Callable[..., Result]) -> None:
    result = invoke(["next", "23 0-20/2 * * *", "-n", "1"])
    assert result.output.splitlines()[1] == (
        "Means:     at minute 23 past every 2nd hour from 0 to 20 (UTC)"
    )
