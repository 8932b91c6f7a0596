"""Checkpoints that let a killed run continue exactly where it stopped: the trainer's side.

A trainer calls :meth:`Checkpointer.step_end` at each step boundary; the checkpoint's files,
their atomic writing and their verified reading are in ``checkpoint_files.py`` (whose names
this module re-exports).

Interrupts: inside :meth:`Checkpointer.interrupts_deferred` the first Ctrl-C or SIGTERM only
sets a flag; the trainer reaches the end of its current step, :meth:`Checkpointer.step_end`
writes a checkpoint there and then raises the interrupt the original handler would have
raised (``KeyboardInterrupt`` / the CLI's ``Terminated``). A second signal interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

# Re-exported: checkpoint.py held the checkpoint's files before checkpoint_files.py.
from mlr_registry.training.checkpoint_files import ARRAYS as ARRAYS
from mlr_registry.training.checkpoint_files import FORMAT_VERSION as FORMAT_VERSION
from mlr_registry.training.checkpoint_files import LATEST as LATEST
from mlr_registry.training.checkpoint_files import META as META
from mlr_registry.training.checkpoint_files import RUN_CONTROL_PARAMS as RUN_CONTROL_PARAMS
from mlr_registry.training.checkpoint_files import TENSORS as TENSORS
from mlr_registry.training.checkpoint_files import _sha256 as _sha256
from mlr_registry.training.checkpoint_files import check_config as check_config
from mlr_registry.training.checkpoint_files import config_hash as config_hash
from mlr_registry.training.checkpoint_files import latest_checkpoint as latest_checkpoint
from mlr_registry.training.checkpoint_files import load_checkpoint as load_checkpoint
from mlr_registry.training.checkpoint_files import read_meta as read_meta
from mlr_registry.training.checkpoint_files import save_checkpoint

# A second SIGINT/SIGTERM sooner than this after the first is the same interrupt delivered twice;
# a person asking to stop at once presses again later than this.
DUPLICATE_SIGNAL_S = 0.5


class Checkpointer:
    """What a trainer calls at each step boundary: writes periodic checkpoints into ``root``
    and turns a deferred Ctrl-C / SIGTERM into a checkpoint followed by the interrupt.

    ``config`` is the run's flattened operative config (stored in ``meta.json`` and checked on
    resume); ``before_save`` runs first (the CLI flushes buffered metrics there, so that the
    tracking store holds every value logged up to the checkpoint); ``after_save`` gets the new
    checkpoint directory (e.g. to upload it to a remote artifact store).
    """

    def __init__(self, root: str | Path, config: Mapping[str, str], keep: int = 1,
                 before_save: Callable[[], None] | None = None,
                 after_save: Callable[[Path], None] | None = None, log: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.config = dict(config)
        self.keep = keep
        self.before_save = before_save
        self.after_save = after_save
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.last_saved_step: int | None = None
        self._signal: int | None = None
        self._signal_at = 0.0  # time.monotonic() of the first signal
        self._previous: dict[int, Any] = {}

    def save(self, step: int, state: Mapping[str, Any], trainer: str) -> Path:
        if self.before_save is not None:
            self.before_save()
        path = save_checkpoint(self.root, step, state, self.config, trainer, keep=self.keep)
        self.last_saved_step = int(step)
        if self.after_save is not None:
            self.after_save(path)
        return path

    def step_end(self, step: int, state_fn: Callable[[], Mapping[str, Any]], trainer: str, due: bool) -> None:
        """At a step boundary (``step`` steps done): save when ``due`` or an interrupt is
        pending; then raise the pending interrupt."""
        pending = self._signal
        if (due or pending is not None) and self.last_saved_step != step:
            path = self.save(step, state_fn(), trainer)
            if pending is not None:
                self.log(f"checkpoint written at step {step}: {path}")
        if pending is not None:
            self._signal = None
            handler = self._previous.get(pending)
            if callable(handler):
                handler(pending, None)  # raises KeyboardInterrupt (SIGINT) or the CLI's Terminated
            raise KeyboardInterrupt()

    @contextlib.contextmanager
    def interrupts_deferred(self) -> Iterator[None]:
        """First SIGINT/SIGTERM: checkpoint at the next step boundary, then stop; second: stop now.

        A repeat within ``DUPLICATE_SIGNAL_S`` of the first counts as the same interrupt: tools
        that stop a job often deliver it twice at once (``timeout`` signals its child, then the
        child's process group), and the copy must not cancel the checkpoint.
        """
        def defer(signum, frame):
            if self._signal is not None:
                if time.monotonic() - self._signal_at < DUPLICATE_SIGNAL_S:
                    return  # the same interrupt, delivered twice
                handler = self._previous.get(signum)  # a second signal: the original behaviour, at once
                if callable(handler):
                    handler(signum, frame)
                raise KeyboardInterrupt()
            self._signal, self._signal_at = signum, time.monotonic()
            self.log(f"{signal.Signals(signum).name}: writing a checkpoint at the end of this step, then "
                     "stopping (send it again to stop at once)")

        try:
            self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            for sig, handler in self._previous.items():
                if handler is not signal.SIG_IGN:
                    signal.signal(sig, defer)
        except ValueError:  # not the main thread: interrupts stay immediate
            self._previous = {}
            yield
            return
        try:
            yield
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
