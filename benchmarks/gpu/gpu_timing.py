"""What ``gpu_profile.py`` (Atari) and ``gpu_profile_dmc.py`` (DMC) share: timing with the GPU
drained before and after, the ``--variants`` option, and the profiler's GPU summary."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[int], object], n: int) -> float:
    """Seconds per call of ``fn(i)`` for ``i < n``, the queued GPU work included."""
    sync()
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    sync()
    return (time.perf_counter() - start) / n


def add_variants(parser: argparse.ArgumentParser, variants: Mapping[str, object], default: str, first: str) -> None:
    """``--variants``: comma-separated names of ``variants``; ``first`` says what the first gets."""
    parser.add_argument("--variants", default=default,
                        help=f"comma-separated, the first {first}; of {', '.join(variants)}")


def chosen_variants(parser: argparse.ArgumentParser, value: str, variants: Mapping[str, object]) -> list[str]:
    """The ``--variants`` names, or the parser's usage error naming the unknown ones."""
    names = value.split(",")
    unknown = [v for v in names if v not in variants]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(variants)}")
    return names


def gpu_kernels(prof: torch.profiler.profile) -> tuple[int, float]:
    """(kernels launched, seconds of summed kernel time) in a finished profile."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(kernels), sum(e.device_time for e in kernels) / 1e6  # µs -> s
