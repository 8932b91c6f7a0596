"""The trainers' progress bar (tqdm: steps done, rate, elapsed and ETA) and its switch.

``progress = 'auto'`` (the default) shows the bar when stderr is a terminal and nothing
otherwise, so a log file, a sweep trial's log or a test's captured output gets no stream of
carriage-return updates; ``True`` shows it anyway (to watch a log with ``tail -f``), ``False``
never.
"""

from __future__ import annotations

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
    return tqdm(total=total, initial=initial, disable=disable, unit=unit, dynamic_ncols=True, desc=desc)


def final_evaluation_note(bar: tqdm, episodes: int, max_steps: int | None, unit: str = "agent steps") -> None:
    """Say on the bar that the final evaluation runs (minutes at full size: 100 games of up to
    27,000 agent steps on Atari), so a bar at 100% that stands still does not look hung."""
    if bar.disable:
        return
    cap = f" of up to {max_steps:,} {unit}" if max_steps else ""
    bar.set_postfix_str(f"final evaluation: {episodes} episode{'s' * (episodes != 1)}{cap}")
    bar.refresh()
