"""User-facing errors.

Every error a researcher can fix (bad config, unknown component, broken plugin, bad shapes)
derives from :class:`MLRError`. The CLI prints these as one line and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Sequence


class MLRError(Exception):
    """Base class of errors caused by user input rather than by a bug."""


class RegistryError(MLRError, LookupError):
    """Unknown kind or component, or a name registered twice."""


class ConfigError(MLRError, ValueError):
    """A gin file or binding is missing, malformed, or gives an invalid value."""


class PluginError(MLRError, ImportError):
    """A plugin failed to load."""


class CheckpointError(MLRError):
    """A checkpoint is missing, corrupt or does not match the run."""


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a number (an integer where ``integer``) and
    ``low <= value <= high`` (bounds open where asked).

    The message names the parameter, the value given and what is accepted, so that a typo in
    a gin file is fixed without reading code (and a count given as 1.5 or 'big' stops the run
    before it starts, not at its first use hours later).
    """
    kind = "an integer" if integer else "a number"
    wanted = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise ConfigError(f"{name} = {value!r} is a {type(value).__name__}; expected {kind}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ConfigError(f"{name} = {value!r} is out of range; expected {kind} in {lo}, {hi}")


def closest_names(name: str, choices: Sequence[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``choices`` closest to ``name`` for a "did you mean" hint, also matching
    with underscores, dashes and spaces ignored (``battlezone`` -> ``battle_zone``)."""
    squashed = {c.replace("_", ""): c for c in choices}
    key = name.lower().replace("_", "").replace("-", "").replace(" ", "")
    close = [squashed[c] for c in difflib.get_close_matches(key, list(squashed), n=n, cutoff=0.6)]
    close += [c for c in difflib.get_close_matches(name, list(choices), n=n) if c not in close]
    return close[:n]
