"""The one place where thread counts are decided."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Iterator, Optional


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def effective_n_threads(n_jobs: Optional[int]) -> int:
    """Threads for the chunk loop: None = all available CPUs; -1 = all; -2 = all but one.

    The result never changes the numbers a fit computes, only how fast.
    """
    cpus = available_cpus()
    if n_jobs is None:
        return cpus
    if n_jobs < 0:
        return max(1, cpus + 1 + n_jobs)
    return int(n_jobs)


@functools.lru_cache(maxsize=1)
def _controller():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


#: whether an enclosing single_threaded_blas() of this thread (context) holds BLAS
_BLAS_HELD: contextvars.ContextVar[bool] = contextvars.ContextVar("emcore_blas_held",
                                                                  default=False)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Hold BLAS to one thread (inside our own parallel regions).

    Re-entrant at no cost: inside an enclosing call of the same thread (a fit
    holds BLAS for all its passes, and each pass asks again) it does nothing,
    where threadpoolctl's limit would query and set every BLAS library again
    (tens of microseconds a pass: a few per cent of a 1.5 ms pass).
    """
    if _BLAS_HELD.get():
        yield
        return
    token = _BLAS_HELD.set(True)
    try:
        with _controller().limit(limits=1, user_api="blas"):
            yield
    finally:
        _BLAS_HELD.reset(token)
