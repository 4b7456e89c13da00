"""pyjob's library: schedules, time, and coordination. No click, no rich, no process exits."""

__version__ = "0.1.0"
