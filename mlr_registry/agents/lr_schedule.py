"""The learning-rate schedule of MLR's own optimizer on DMC
(docs/faithfulness.md#dmc-optimisation): fairseq's ``InverseSquareRootSchedule`` with warmup 6000, hard-coded in the
reference's ``MTMSacAgent``.

Used as ``torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(inverse_sqrt_warmup,
warmup=...))``, stepped once after every MLR update, so ``k`` counts the MLR updates done so far.
"""

from __future__ import annotations

import math

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
