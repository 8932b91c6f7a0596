"""Reduced precision from outside a model: bf16 autocast around chosen modules' forwards.

The agents never open an autocast region themselves. The execution layer (:class:`Execution`)
wraps the forward of each module an agent lists in ``networks()`` (and of each auxiliary loss)
so that it runs under ``torch.autocast`` and hands float32 tensors back. Master weights,
gradients, optimizer state and every loss outside those modules stay float32; bf16 needs no
gradient scaler (its exponent range is float32's).
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


def bf16_unsupported_reason(device: torch.device) -> str | None:
    """Why bf16 autocast cannot run on ``device``, or None when it can."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name(device)} has no bf16 support (needs compute capability >= 8.0)"
        return None
    if device.type == "cpu":
        return None
    if not torch.amp.is_autocast_available(device.type):
        return f"torch has no autocast for device type {device.type!r}"
    return None


def _as_float(out: Any) -> Any:
    """Floating tensors (alone or in a tuple) as float32; anything else unchanged."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(_as_float(o) for o in out)
    return out


def _autocast_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    device_type, dtype, cast = self._execution_autocast
    with torch.autocast(device_type=device_type, dtype=dtype):
        out = type(self).forward(self, *args, **kwargs)
    return _as_float(out) if cast else out


def autocast_forward(module: nn.Module, device_type: str, dtype: torch.dtype, float_outputs: bool = True) -> None:
    """Make ``module``'s forward run under autocast to ``dtype`` (this instance only; its class,
    parameters and ``state_dict`` are untouched). ``float_outputs``: floating outputs come back
    as float32, so whatever the caller computes from them is float32 arithmetic. The wrapper is
    a method bound to the module, so ``copy.deepcopy`` gives the copy its own."""
    if "forward" in vars(module):
        if getattr(module, "_execution_autocast", None) is not None:
            module._execution_autocast = (device_type, dtype, float_outputs)
            return
        raise TypeError(f"{type(module).__name__} already has an instance-level forward; cannot wrap it")
    module._execution_autocast = (device_type, dtype, float_outputs)
    module.forward = types.MethodType(_autocast_forward, module)
