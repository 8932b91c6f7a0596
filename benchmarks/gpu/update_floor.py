"""The physical floor of one Atari Rainbow(+MLR) update on a GPU, from what the update does:
its FLOPs (torch's FlopCounterMode over one real update, on any device) and the memory
traffic its fp32 parameters cannot avoid (BYTES_PER_PARAM, per parameter the optimizer
steps). The floor assumes the GPU's peak in both and no overlap between the compute-bound
kernels (matrix products, convolutions) and the memory-bound ones (clipping, Adam), which run
one after the other. It tells how far a measured update is from what the hardware allows, and
whether the fast path's goal (196,000 updates in 15 minutes, acting and evaluation included) fits.

    python benchmarks/gpu/update_floor.py                              # H100 SXM: 989 bf16 TFLOP/s, 3.35 TB/s
    python benchmarks/gpu/update_floor.py --tflops 989 --tbps 4.8      # H200
    python benchmarks/gpu/update_floor.py --objective baseline --tiny  # a quick check of this script
"""

from __future__ import annotations

import argparse

import torch
from gpu_profile import SHAPE, A, build_agent
from torch.utils.flop_counter import FlopCounterMode

from mlr_registry.batch import Batch

UPDATES = 196_000  # Atari-100k: 2 updates per env step from step 2,000 on
GOAL_MINUTES = 15.0
# Bytes each optimized fp32 parameter must move per update, at the least: what a perfectly
# fused update still does (eager PyTorch moves more: clipping's scaling pass reads and writes
# the gradient again, 8 B; autocast re-reads the fp32 weight to make its bf16 copy, 4 B).
BYTES_PER_PARAM = {
    "backward writes its fp32 gradient": 4,
    "clip_grad_norm_ reads it for the norm (the scaling can fuse into Adam)": 4,
    "Adam: read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq": 28,
    "the bf16 copy of the weight for autocast, written by the same kernel": 2,
}


def floor(flops: float, params: int, tflops: float, tbps: float) -> dict[str, float]:
    """Compute and memory time of one update at peak, their sum, and what it implies."""
    compute_ms = flops / (tflops * 1e12) * 1e3
    memory_ms = params * sum(BYTES_PER_PARAM.values()) / (tbps * 1e12) * 1e3
    total = compute_ms + memory_ms
    return {"compute_ms": compute_ms, "memory_ms": memory_ms, "floor_ms": total,
            "updates_per_s": 1e3 / total, "run_minutes": UPDATES * total / 6e4,
            "goal_ms": GOAL_MINUTES * 6e4 / UPDATES}


def count(objective: str, tiny: bool) -> tuple[float, int]:
    """FLOPs of one update (the second: the first builds lazy state) and optimized parameters."""
    agent = build_agent("cpu", "eager_fp32", objective, tiny)
    b, t = 32, 26
    g = torch.Generator().manual_seed(0)
    batch = Batch(obs=torch.randint(0, 256, (b, t, *SHAPE), dtype=torch.uint8, generator=g),
                  action=torch.randint(0, A, (b, t), generator=g), reward=torch.zeros(b, t),
                  done=torch.zeros(b, t, dtype=torch.bool), returns=torch.randn(b, 16, generator=g),
                  done_n=torch.zeros(b, 16, dtype=torch.bool), weights=torch.ones(b), indices=torch.arange(b))
    agent.update(batch)
    with FlopCounterMode(display=False) as counter:
        agent.update(batch)
    params = sum(p.numel() for group in agent.optimizer.param_groups for p in group["params"])
    return float(counter.get_total_flops()), int(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", choices=["mlr", "baseline"], default="mlr")
    parser.add_argument("--tflops", type=float, default=989.0, help="dense bf16 peak, TFLOP/s (H100 SXM: 989)")
    parser.add_argument("--tbps", type=float, default=3.35, help="memory bandwidth, TB/s (H100 SXM 3.35, H200 4.8)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks (a quick check of this script)")
    args = parser.parse_args()
    flops, params = count(args.objective, args.tiny)
    f = floor(flops, params, args.tflops, args.tbps)
    print(f"{args.objective}{' (tiny)' if args.tiny else ''}: {flops / 1e12:.3f} TFLOP per update, "
          f"{params / 1e6:.1f} M optimized parameters x {sum(BYTES_PER_PARAM.values())} B = "
          f"{params * sum(BYTES_PER_PARAM.values()) / 1e9:.2f} GB moved")
    for what, nbytes in BYTES_PER_PARAM.items():
        print(f"  {nbytes:>2} B/param  {what}")
    print(f"at {args.tflops:g} TFLOP/s and {args.tbps:g} TB/s: compute {f['compute_ms']:.2f} ms + memory "
          f"{f['memory_ms']:.2f} ms = {f['floor_ms']:.2f} ms per update ({f['updates_per_s']:.0f} updates/s); "
          f"{UPDATES:,} updates take at least {f['run_minutes']:.1f} min")
    print(f"the {GOAL_MINUTES:g}-minute goal allows {f['goal_ms']:.2f} ms per update, acting and evaluation "
          f"included: {f['floor_ms'] / f['goal_ms']:.0%} of it is the floor")


if __name__ == "__main__":
    main()
