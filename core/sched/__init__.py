"""The scheduler of `pyjob run`, in parts: see core/sched/loop.py for how they fit."""
