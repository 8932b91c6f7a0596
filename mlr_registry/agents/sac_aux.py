"""How SAC trains its auxiliary losses (docs/faithfulness.md#dmc-optimisation): their own Adam,
which also holds the critic encoder (the reference's ``MTM.parameters()`` contains
``critic.encoder``), with the warm-up each loss declares (:mod:`~mlr_registry.agents.lr_schedule`);
CURL's optional second Adam over the encoder; one backward of the summed losses and one
grad-norm clip over all of those parameters; and the optimizer steps, which run outside the
compiled aux phase (the lr changes at every step of a warm-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlr_registry.agents.lr_schedule import warmup_schedule
from mlr_registry.batch import Batch
from mlr_registry.losses.auxiliary import LossContext, checked_output, prefixed


def aux_optimizer(losses: Sequence[nn.Module], encoder: nn.Module,
                  lr: float) -> tuple[list[nn.Parameter], torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """SAC's auxiliary Adam (betas (0.9, 0.999)) over the losses' parameters AND the critic
    ``encoder`` (the reference's ``MTM.parameters()`` contains ``critic.encoder``), one parameter
    group per warm-up the losses declare (``lr_warmup``), and its schedule: (parameters in group
    order, optimizer, scheduler). Group 0 holds the losses with the longest warm-up, then the
    encoder; with one loss (or one warm-up) a single group, as the reference's one Adam."""
    warmups = [int(loss.lr_warmup) for loss in losses]
    order = [max(warmups)] + [w for w in dict.fromkeys(warmups) if w != max(warmups)]
    groups: dict[int, list[nn.Parameter]] = {w: [] for w in order}
    seen: set[int] = set()
    members = [(w, p) for loss, w in zip(losses, warmups, strict=True) for p in loss.parameters()]
    members += [(order[0], p) for p in encoder.parameters()]
    for warmup, p in members:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            groups[warmup].append(p)
    group_warmups = [w for w in order if groups[w]]
    optimizer = torch.optim.Adam([{"params": groups[w]} for w in group_warmups], lr=lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [warmup_schedule(w) for w in group_warmups])
    return [p for w in group_warmups for p in groups[w]], optimizer, scheduler


def aux_optimizers(losses: Sequence[nn.Module], encoder: nn.Module, lr: float, extra_encoder_adam: bool) -> tuple[
        list[nn.Parameter], torch.optim.Adam | None, torch.optim.lr_scheduler.LambdaLR | None, torch.optim.Adam | None]:
    """(parameters, Adam, schedule) of :func:`aux_optimizer`, and CURL's second Adam over
    ``encoder`` (betas (0.9, 0.999)) where ``extra_encoder_adam``, else None; ``([], None, None,
    None)`` without losses. ``lr``: the aux lr, already scaled (``aux_lr_scale·aux_lr``)."""
    if len(losses) == 0:
        return [], None, None, None
    parameters, optimizer, scheduler = aux_optimizer(losses, encoder, lr)
    if not extra_encoder_adam:
        return parameters, optimizer, scheduler, None
    return parameters, optimizer, scheduler, torch.optim.Adam(encoder.parameters(), lr=lr, betas=(0.9, 0.999))


def aux_backward(losses: Sequence[nn.Module], names: Sequence[str], sequences: Batch, context: LossContext,
                 parameters: Sequence[nn.Parameter],
                 max_grad_norm: float) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
    """The losses on ``sequences``, summed, backward, then one clip of ``parameters``' gradient
    norm to ``max_grad_norm`` → (summed loss, their metrics ``<name>_<metric>``, pre-clip norm)."""
    total = torch.zeros((), device=context.device)
    metrics: dict[str, Any] = {}
    for loss, name in zip(losses, names, strict=True):
        output = checked_output(loss, loss(sequences, context))
        total = total + output.total()
        metrics.update(prefixed(name, output.metrics))
    total.backward()
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    return total.detach(), metrics, norm


def step_aux_optimizers(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                        encoder_optimizer: torch.optim.Optimizer | None) -> float:
    """Step the aux Adam, then CURL's second encoder Adam (if any) at the same lr on the same
    (clipped) gradients, then the schedule; returns the lr this step used (group 0's, the
    encoder's)."""
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    if encoder_optimizer is not None:
        encoder_optimizer.param_groups[0]["lr"] = lr
        encoder_optimizer.step()
    scheduler.step()
    return float(lr)
