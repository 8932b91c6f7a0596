"""Learning-rate schedules an auxiliary loss declares (``lr_warmup``) for an agent that gives
aux losses their own optimizer (SAC). MLR's on DMC (docs/faithfulness.md#dmc-optimisation) is
fairseq's ``InverseSquareRootSchedule`` with warmup 6000, hard-coded in the reference's
``MTMSacAgent`` (here ``losses.mlr.lr_warmup = 6000`` in gin/dmc_mlr.gin).

Used as ``torch.optim.lr_scheduler.LambdaLR(opt, warmup_schedule(warmup))``, stepped once after
every aux update, so ``k`` counts the aux updates done so far;
:func:`~mlr_registry.agents.sac_aux.aux_optimizer` builds SAC's auxiliary Adam with one such
schedule per parameter group.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from mlr_registry.errors import check_range


def inverse_sqrt_warmup(step: int, warmup: int = 6000, start_factor: float = 5e-4) -> float:
    """LR multiplier after ``step`` = k updates.

    k < warmup: ``start_factor + (1 − start_factor)·k/warmup`` (a linear warmup; the first
    update, k = 0, uses exactly ``start_factor``); k ≥ warmup: ``sqrt(warmup / k)`` (1 at the end
    of the warmup, then 1/√k decay; 0.35 at k = 49k, the end of a 100k walker run).
    """
    check_range("inverse_sqrt_warmup.warmup", warmup, 1)
    check_range("inverse_sqrt_warmup.start_factor", start_factor, 0, 1, low_open=True)
    check_range("inverse_sqrt_warmup.step", step, 0)
    if step < warmup:
        return start_factor + (1.0 - start_factor) * step / warmup
    return math.sqrt(warmup / step)


def constant_lr(step: int) -> float:
    """The lr multiplier of a loss without warm-up (``lr_warmup = 0``): always 1."""
    return 1.0


def warmup_schedule(warmup: int) -> Callable[[int], float]:
    """The LambdaLR multiplier of a loss's ``lr_warmup``: :func:`inverse_sqrt_warmup` over that
    many updates, or :func:`constant_lr` for 0."""
    check_range("lr_warmup", warmup, 0, integer=True)
    return functools.partial(inverse_sqrt_warmup, warmup=warmup) if warmup > 0 else constant_lr

