"""Host↔device transfers that do not wait for the GPU's queue to drain.

A plain ``torch.as_tensor(array, device='cuda')`` copies from pageable host memory, and CUDA
makes that copy synchronous: the host waits until every kernel queued before it has run. In a
training loop that has queued an update, each such copy stalls the host for the whole update
and leaves the GPU idle while the host then prepares the next one. Staging the data in pinned
memory makes the copy asynchronous: it takes its place in the stream, in order, and the host
moves on. PyTorch's pinned allocator keeps a staging block alive until its copy has run, so
each call may allocate a fresh one safely.

Off CUDA both helpers are the plain, synchronous operations (same values).
"""

from __future__ import annotations

from typing import Any

import torch


def to_device(data: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.as_tensor(data, dtype, device)`` without a host wait on CUDA.

    data: a tensor, NumPy array, Python number or list. A tensor already on ``device`` is returned
    as is (converted to ``dtype`` on the device if given).
    """
    device = torch.device(device)
    tensor = torch.as_tensor(data, dtype=dtype)
    if tensor.device == device or tensor.device.type != "cpu" or device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class HostCopy:
    """A device tensor's value on the host, copied in stream order; :meth:`result` waits for that
    copy alone, not for the work queued after it.

    The training loop reads its action this way after queueing the step's updates: the host waits
    for the acting kernels (queued before the updates), while the GPU goes on with the updates.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self._event = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor.detach().clone()

    def result(self) -> torch.Tensor:
        """The host tensor, once its copy has run."""
        if self._event is not None:
            self._event.synchronize()
        return self._host


__all__ = ["HostCopy", "to_device"]
