"""The trainers' progress bar (tqdm: steps done, rate, elapsed and ETA) and its switch.

``progress = 'auto'`` (the default) shows the bar when stderr is a terminal and nothing
otherwise, so a log file, a sweep trial's log or a test's captured output gets no stream of
carriage-return updates; ``True`` shows it anyway (to watch a log with ``tail -f``), ``False``
never.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm

from mlr_registry.errors import ConfigError

PROGRESS_CHOICES = (True, False, "auto")


def check_progress(name: str, progress: Any) -> bool | str:
    """``progress`` as given when it is one of True, False, 'auto'; else a ConfigError naming ``name``."""
    if not any(progress is c or (isinstance(c, str) and progress == c) for c in PROGRESS_CHOICES):
        raise ConfigError(f"{name} = {progress!r}: use True (always), False (never) or 'auto' "
                          "(when stderr is a terminal, the default)")
    return progress


def progress_bar(progress: bool | str, total: int, initial: int, unit: str, desc: str) -> tqdm:
    """A bar over ``total`` steps from ``initial`` (a resumed run starts part-way: its ETA counts
    the steps left only). tqdm's ``disable=None`` is its own test for a terminal."""
    disable = None if progress == "auto" else not progress
    # A terminal that reports no size (a pseudo-terminal nobody sized: script(1), some IDEs)
    # would get no bar at all from tqdm (it takes 0 rows for no room); it gets a fixed size.
    sized = _terminal_width() > 0
    columns, rows = (None, None) if sized else FALLBACK_SIZE
    return tqdm(total=total, initial=initial, disable=disable, unit=unit, desc=desc, dynamic_ncols=sized,
                ncols=columns, nrows=rows)


FALLBACK_SIZE = (120, 20)  # columns, rows


def _terminal_width() -> int:
    """Columns of the terminal stderr is on (0 when it reports none, or is no terminal)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, ValueError, OSError):  # no fileno (captured), not a terminal
        return 0


def final_evaluation_note(bar: tqdm, episodes: int, max_steps: int | None, unit: str = "steps") -> None:
    """Say on the bar that the final evaluation runs (minutes at full size: 100 games of up to
    27,000 agent steps on Atari), so a bar at 100% that stands still does not look hung."""
    if bar.disable:
        return
    cap = f" (≤ {max_steps:,} {unit} each)" if max_steps else ""
    bar.set_postfix_str(f"evaluating: {episodes} episode{'s' * (episodes != 1)}{cap}")
    bar.refresh()
