"""pyjob's benchmarks: `python -m benchmarks` runs every area; each module also runs alone."""
