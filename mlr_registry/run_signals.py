"""How ``python -m mlr_registry.run`` handles signals and native crashes.

SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated`; either ends the run KILLED
with what it had logged. An interrupt that Python lost in a finalizer stays pending and is raised
again at the run's next metric log. While the run's status is written, both signals are ignored.
A crash in native code prints every thread's Python stack (``faulthandler``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run ends KILLED with what it had logged."""


# The interrupt whose exception has not yet reached _run_to_end. Python discards an exception
# raised inside a finalizer (``__del__``, a weakref callback such as SQLAlchemy's connection
# pool's): its signal handler runs wherever the main thread is, so one Ctrl-C could be printed as
# "Exception ignored" and lost, and the run trained on. The run's next metric log raises it again.
_pending_signal: int | None = None


def _on_interrupt(signum, frame):  # noqa: ARG001
    """SIGINT raises KeyboardInterrupt, SIGTERM Terminated; either stays pending until it ends the run."""
    global _pending_signal
    _pending_signal = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _raise_lost_interrupt() -> None:
    if _pending_signal is not None:
        _on_interrupt(_pending_signal, None)


def _clear_pending_interrupt() -> None:
    global _pending_signal
    _pending_signal = None


@contextlib.contextmanager
def _signals_ignored():
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _enable_faulthandler() -> None:
    """A crash in native code (a driver, a renderer) prints every thread's Python stack before
    the process dies, instead of ending it silently with its MLflow run left RUNNING. Left as it
    is where something (pytest, the user) enabled it already, or where stderr is no real file."""
    if faulthandler.is_enabled():
        return
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, OSError, RuntimeError):  # UnsupportedOperation; RuntimeError: stderr None
        pass
