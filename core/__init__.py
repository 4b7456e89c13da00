"""pyjob's library: schedules, time, and coordination. No click, no rich, no process exits."""

__version__ = "0.1.0"

# Defined here, not in executor, so that the CLI can offer them without importing the executor.
OVERLAP_POLICIES = ("skip", "queue", "allow", "replace")
