"""The values SAC accepts for its arguments (their meaning: :class:`~mlr_registry.agents.sac.SAC`).

Checked before anything is built, so that a typo in a gin file stops the run with a one-line
:class:`~mlr_registry.errors.ConfigError` that names the argument and the accepted range.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlr_registry.errors import ConfigError, check_range


def check_arguments(observation_shape: Sequence[int], device: str, *, num_actions: int, hidden_dim: int,
                    discount: float, init_temperature: float, actor_lr: float, critic_lr: float, alpha_lr: float,
                    aux_lr: float, aux_lr_scale: float, aux_max_grad_norm: float, actor_beta: float,
                    critic_beta: float, alpha_beta: float, actor_log_std_min: float, actor_log_std_max: float,
                    actor_update_period: int, target_update_period: int, critic_tau: float, encoder_tau: float,
                    image_size: int, crop_offsets_exclusive: bool) -> tuple[tuple[int, int, int], torch.device]:
    """ConfigError for the first argument out of its range; else the observation's (c, h, w) and
    the torch device."""
    if len(observation_shape) != 3:
        raise ConfigError(f"sac.observation_shape = {tuple(observation_shape)}; expected (c, h, w)")
    c, h, w = (int(s) for s in observation_shape)
    check_range("sac.num_actions", num_actions, 1)
    check_range("sac.hidden_dim", hidden_dim, 1)
    check_range("sac.discount", discount, 0, 1)
    check_range("sac.init_temperature", init_temperature, 0, low_open=True)
    for name, value in (("actor_lr", actor_lr), ("critic_lr", critic_lr), ("alpha_lr", alpha_lr),
                        ("aux_lr", aux_lr), ("aux_lr_scale", aux_lr_scale),
                        ("aux_max_grad_norm", aux_max_grad_norm)):
        check_range(f"sac.{name}", value, 0, low_open=True)
    for name, value in (("actor_beta", actor_beta), ("critic_beta", critic_beta), ("alpha_beta", alpha_beta)):
        check_range(f"sac.{name}", value, 0, 1, high_open=True)
    if not actor_log_std_min < actor_log_std_max:
        raise ConfigError(f"sac.actor_log_std_min = {actor_log_std_min} must be below "
                          f"sac.actor_log_std_max = {actor_log_std_max}")
    check_range("sac.actor_update_period", actor_update_period, 1)
    check_range("sac.target_update_period", target_update_period, 1)
    check_range("sac.critic_tau", critic_tau, 0, 1, low_open=True)
    check_range("sac.encoder_tau", encoder_tau, 0, 1, low_open=True)
    check_range("sac.image_size", image_size, 1, min(h, w))
    if crop_offsets_exclusive and (h, w) != (image_size, image_size) and min(h, w) - 1 < image_size:
        raise ConfigError(f"sac.crop_offsets_exclusive = True needs both observation sides above "
                          f"image_size = {image_size} (got {h}x{w}); set it False or match the sizes")
    try:
        return (c, h, w), torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"sac.device = {device!r} is not a torch device ({exc})") from None
