"""Weight initializers shared by components that follow a JAX/flax reference (BBF's networks)."""

from __future__ import annotations

from torch import nn


def xavier_uniform_(module: nn.Module) -> None:
    """Every Linear and Conv2d inside ``module``: Xavier-uniform weight, zero bias (flax's ``Dense``
    and ``Conv`` with ``xavier_uniform`` kernels and their default zero biases)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class XavierLinear(nn.Linear):
    """``nn.Linear`` drawn Xavier-uniform with a zero bias (flax ``Dense``), also when a reset
    calls its ``reset_parameters`` again."""

    def reset_parameters(self) -> None:
        xavier_uniform_(self)
