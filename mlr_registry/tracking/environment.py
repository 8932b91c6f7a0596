"""What a run ran on, so that a result can be reproduced and compared across machines: tags for
the Python, torch, CUDA and cuDNN versions and the device, and the installed packages as a
``name==version`` list (the ``environment/packages.txt`` artifact).

The trainer's tracking layer records these; components never see them.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

PACKAGES_ARTIFACT = "environment/packages.txt"
NONE = "none"


def installed_packages() -> str:
    """Every distribution importable in this interpreter, one ``name==version`` a line, sorted
    by lower-cased name; a name installed twice on ``sys.path`` is listed once, as Python
    imports it (the first found)."""
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "".join(f"{seen[key]}\n" for key in sorted(seen))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name`` on Linux), else
    ``platform.processor()``, else the machine type (``x86_64``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment_tags(device: str | None) -> dict[str, str]:
    """``python_version``, ``torch_version``, ``cuda_version`` and ``cudnn_version`` (``none``
    unless the run's device is a CUDA one), ``device`` (what ran: ``cuda:0``, ``cpu``) and
    ``device_name`` (the GPU's name, or the CPU's model). ``device`` None: the trainer said
    nothing, so CUDA counts when available."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    tags = {"python_version": platform.python_version(), "torch_version": torch.__version__,
            "cuda_version": NONE, "cudnn_version": NONE, "device": str(device), "device_name": cpu_model()}
    if on_cuda:
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        tags["device"] = f"cuda:{index}"
        tags["device_name"] = torch.cuda.get_device_name(index)
        tags["cuda_version"] = str(torch.version.cuda or NONE)
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        tags["cudnn_version"] = str(cudnn) if cudnn else NONE
    return tags

