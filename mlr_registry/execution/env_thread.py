"""The env thread of ``overlap_env_step``: the training env steps on a helper thread while the
update runs on the main thread."""

from __future__ import annotations

import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def block_interrupts() -> None:
    """Block SIGINT and SIGTERM on the calling (helper) thread, so that they reach the main thread,
    where Python runs its handlers anyway: Linux may hand a process-wide signal to any thread that
    does not block it, and one landing on the env thread would interrupt the native call running
    there (docs/performance.md#interrupts-and-the-env-thread)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)


def beside(executor: ThreadPoolExecutor, background: Callable[[], T], foreground: Callable[[], U]) -> tuple[U, T]:
    """``(foreground(), background())``, the background call on ``executor``'s thread while the
    foreground one runs on this thread (the trainers' ``overlap_env_step``: the env steps while
    the update runs). Waits for the background call even when the foreground one raises, so
    nothing touches the env after the loop stopped."""
    pending = executor.submit(background)
    try:
        result = foreground()
    finally:
        outcome = pending.result()
    return result, outcome
