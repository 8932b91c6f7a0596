"""BBF's annealing of the update horizon n and the discount γ after each reset
(docs/bbf.md#annealing).

Both follow BBF's ``exponential_decay_scheduler``: over ``period`` updates after a reset the
value moves from its start to its end geometrically (log-linearly), then stays at the end.
γ is annealed in 1 − γ (``reverse``), so 1 − γ shrinks geometrically from 0.03 to 0.003. The
horizon is annealed as a fraction of the longest one and rounded: n(s) = round(n_max ·
(n_min / n_max)^(s / period)), 10 → 3 in BBF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlr_registry.errors import ConfigError, check_range


def exponential_schedule(step: int, period: int, initial: float, final: float, reverse: bool = False) -> float:
    """The value ``step`` updates into a cycle: ``initial`` at 0, ``final`` from ``period`` on,
    geometric in between (in 1 − value when ``reverse``). ``period`` 0: ``final`` at once
    (BBF's scheduler switches at its warm-up step, which is 0 here)."""
    if reverse:
        initial, final = 1.0 - initial, 1.0 - final
    if period == 0:
        value = final
    else:
        fraction = min(max((period - step) / period, 0.0), 1.0)  # 1 at the start, 0 at the end
        value = math.exp(fraction * (math.log(initial) - math.log(final)) + math.log(final))
    return 1.0 - value if reverse else value


@dataclass(frozen=True)
class Annealing:
    """n and γ as functions of the updates since the last reset (or since training began).

    Args:
        max_update_horizon: n at the start of a cycle (10, BBF's ``max_update_horizon``).
        update_horizon: n at its end (3).
        min_discount: γ at the start of a cycle (0.97, BBF's ``min_gamma``).
        discount: γ at its end (0.997, Dopamine's ``gamma``).
        period: updates one cycle takes (10,000, BBF's ``cycle_steps``); 0 disables annealing
            (the end values from the first update).
    """

    max_update_horizon: int = 10
    update_horizon: int = 3
    min_discount: float = 0.97
    discount: float = 0.997
    period: int = 10_000

    def __post_init__(self) -> None:
        check_range("bbf.update_horizon", self.update_horizon, 1, integer=True)
        check_range("bbf.max_update_horizon", self.max_update_horizon, 1, integer=True)
        if self.max_update_horizon < self.update_horizon:
            raise ConfigError(f"bbf.max_update_horizon = {self.max_update_horizon} is below bbf.update_horizon "
                              f"= {self.update_horizon}; the horizon anneals down from the first to the second")
        check_range("bbf.discount", self.discount, 0, 1, high_open=True)
        check_range("bbf.min_discount", self.min_discount, 0, 1, high_open=True)
        check_range("bbf.anneal_period", self.period, 0, integer=True)

    def horizon(self, step: int) -> int:
        """n after ``step`` updates of the cycle (BBF rounds the annealed fraction of n_max)."""
        fraction = exponential_schedule(step, self.period, 1.0, self.update_horizon / self.max_update_horizon)
        return int(round(fraction * self.max_update_horizon))

    def gamma(self, step: int) -> float:
        """γ after ``step`` updates of the cycle (BBF skips this annealing when its period ≤ 1)."""
        if self.period <= 1:
            return self.discount
        return exponential_schedule(step, self.period, self.min_discount, self.discount, reverse=True)
