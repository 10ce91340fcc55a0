"""Facts about the machine and running work on its cores (torch-free)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


def available_cores() -> int:
    """The cores this process may run on (affinity- and cgroup-aware where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def workers_for(items: int, min_items_per_worker: int, cores: int | None = None) -> int:
    """Processes worth starting for `items` texts: at most one per core, and none beyond the
    first for fewer than `min_items_per_worker` each (starting a worker costs seconds)."""
    return max(1, min(cores or available_cores(), items // min_items_per_worker))


def start_method() -> str:
    """fork where the platform has it (workers inherit the parent's data, nothing is pickled), else spawn."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


@contextmanager
def process_map(
    workers: int, initializer: Callable | None = None, initargs: tuple = (), method: str | None = None
) -> Iterator[Callable]:
    """map(function, *iterables) on `workers` processes (`method`: fork, spawn or forkserver;
    default `start_method()`), or in this process for one. Results come back in order; nothing
    may depend on the start method (a test runs the baseline's counting under spawn)."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield lambda function, *iterables: list(map(function, *iterables))
        return
    context = multiprocessing.get_context(method or start_method())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start, initargs=(initializer, initargs)) as pool:
        yield lambda function, *iterables: list(pool.map(function, *iterables))


def _worker_start(initializer: Callable | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: one message, not one per worker
    if initializer is not None:
        initializer(*initargs)
