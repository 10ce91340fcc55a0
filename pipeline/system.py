"""Facts about the machine that several stages need (torch-free)."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (affinity- and cgroup-aware where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
