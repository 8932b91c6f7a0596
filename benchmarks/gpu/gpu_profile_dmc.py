"""Where DMC's fast path spends its time: the update as ``trainers.dmc`` runs it (a SAC batch, the
MLR batch, ``agent.update``), at full size (``gin/fast/dmc_mlr_fast.gin`` + a task file), on a
replay filled with random frames in episodes of the task's length; timed per variant, and the
first variant profiled with ``torch.profiler``, its host waits counted.

    python benchmarks/gpu/gpu_profile_dmc.py --out gpu_out                       # on a CUDA machine
    python benchmarks/gpu/gpu_profile_dmc.py --variants fast,reference_draw,cudagraphs
    python benchmarks/gpu/gpu_profile_dmc.py --out /tmp/p --cpu --tiny           # the code path, on a CPU

Variants (``--variants``; gin bindings on top of the fast config): ``fast`` (the file as it is),
``reference_draw`` (the MLR batch drawn as the reference does, with its host sync:
``fixed_size_sequences = False``), ``cudagraphs`` (``compile_mode = 'reduce-overhead'``),
``nchw`` (conv weights and activations in NCHW memory: the fast file keeps them channels-last on
CUDA since an H100 measured 30.4 against 38.7 ms per update), ``channels_last`` (NHWC forced, on
a CPU too), ``cudnn_benchmark`` (cuDNN's algorithm autotuning), ``channels_last_cudnn`` (both
forced), ``eager_bf16`` (no compilation),
``eager_fp32`` (the reference path). Each compiled variant costs a minute or two of compilation
on a GPU. Why the convolution variants: DMC's update is convolutions above all. The encoder
(4 convs, 64 channels, on 84x84 crops) costs 0.33 GFLOP per frame stack forward and 0.97 with
its backward (torch's FlopCounterMode); an update runs 2,560 stacks forward and backward (the
critic's 512, MLR's 128 x 16 masked) and 3,584 forward only (target critic and next
actions, MLR's target encoder, the actor phase every second step): ≈3.7 TFLOP, about 100
TFLOP/s in the 37 ms of GPU time an update took on an H100 (22 updates/s, 81% busy), a tenth
of its bf16 peak. cuDNN runs bf16 convolutions on tensor cores in NHWC; NCHW tensors are
converted around each one. Atari's update, dominated by its transformer, got nothing from
either switch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gin
import numpy as np
import torch
from gpu_timing import add_variants, chosen_variants, gpu_kernels, sync, timed
from torch.profiler import ProfilerActivity, profile

from mlr_registry import config, registry
from mlr_registry.dry_run import tiny_bindings
from mlr_registry.training.experiment import experiment

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {"fast": (), "reference_draw": ("replays.transition.fixed_size_sequences = False",),
            "cudagraphs": ("agents.sac.compile_mode = 'reduce-overhead'",),
            "nchw": ("execution.channels_last = False",),
            "channels_last": ("execution.channels_last = True",),
            "cudnn_benchmark": ("execution.cudnn_benchmark = True",),
            "channels_last_cudnn": ("execution.channels_last = True", "execution.cudnn_benchmark = True"),
            "eager_bf16": ("execution.compile = False",),
            "eager_fp32": ("execution.compile = False", "execution.precision = 'fp32'")}
# The profiler's names for host calls that wait for the GPU.
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy")


def build_trainer(variant: str, task: str, device: str, tiny: bool):
    """The DMC trainer of the fast config with a VARIANTS entry's bindings: no evaluation workers,
    no env thread (only the update is measured)."""
    files = [str(REPO / "gin/fast/dmc_mlr_fast.gin"), str(REPO / f"gin/dmc/{task}.gin")]
    bindings = [*VARIANTS[variant], f"trainers.dmc.device = '{device}'", "trainers.dmc.eval_workers = 0",
                "execution.overlap_env_step = False", "trainers.dmc.progress = False"]
    if device == "cpu":
        bindings.append("execution.compile = False")  # inductor's C++ compile: minutes on a CPU
    if tiny:
        bindings = tiny_bindings(files, bindings)
    gin.clear_config()
    config.parse(files, bindings)
    torch.backends.cudnn.benchmark = False  # process-wide: only the variants that ask turn it on
    torch.manual_seed(0)
    return experiment().trainer()


def fill(trainer, transitions: int, episode: int) -> None:
    """``transitions`` random transitions in episodes of ``episode`` agent steps, added as the
    trainer adds them (frame stacks shifted by one frame per step)."""
    rng = np.random.default_rng(0)
    shape, k = trainer.replay.observation_shape, trainer.replay.frame_stack
    c = shape[0] // k
    for start in range(0, transitions, episode):
        obs = np.concatenate([rng.integers(0, 256, (c, *shape[1:]), dtype=np.uint8)] * k)
        for t in range(min(episode, transitions - start)):
            next_obs = np.concatenate([obs[c:], rng.integers(0, 256, (c, *shape[1:]), dtype=np.uint8)])
            action = rng.uniform(-1, 1, trainer.replay.action_dim).astype(np.float32)
            trainer.replay.add(obs, action, 0.0, next_obs, done=False, episode_end=t == episode - 1)
            obs = next_obs


def profiled(trainer, out: Path, cpu: bool) -> None:
    """A few updates under the profiler: GPU busy fraction, kernels and host waits per update."""
    steps = 1 if cpu else 5
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([] if cpu else [ProfilerActivity.CUDA])) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer._update(True)
        sync()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels, busy = gpu_kernels(prof)
    waits = sum(e.count for e in events if e.key in WAITS)
    print(f"profiled updates: {wall / steps * 1e3:.2f} ms per update; GPU kernels {kernels / steps:.0f} per "
          f"update, busy {busy / wall:.0%} of the wall time; host waits {waits / steps:.1f} per update")
    key = "self_cpu_time_total" if cpu else "self_device_time_total"
    tables = (f"by {key}\n{events.table(sort_by=key, row_limit=30)}\n\n"
              f"by self CPU time\n{events.table(sort_by='self_cpu_time_total', row_limit=30)}\n")
    (out / "profile_dmc.txt").write_text(tables)
    print(events.table(sort_by=key, row_limit=12, max_name_column_width=48))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_out")
    parser.add_argument("--task", default="cheetah_run", help="a gin/dmc/<task>.gin file")
    parser.add_argument("--cpu", action="store_true", help="on the CPU, eagerly, few steps (checks the script)")
    parser.add_argument("--tiny", action="store_true", help="the dry run's tiny sizes (a quick check)")
    parser.add_argument("--budget-s", type=float, default=300, help="skip the remaining variants past this")
    add_variants(parser, VARIANTS, "fast,reference_draw", "profiled")
    args = parser.parse_args()
    variants = chosen_variants(parser, args.variants, VARIANTS)
    if not (REPO / f"gin/dmc/{args.task}.gin").exists():
        parser.error(f"no gin/dmc/{args.task}.gin; the tasks are "
                     f"{', '.join(sorted(p.stem for p in (REPO / 'gin/dmc').glob('*.gin')))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    registry.load_all()
    device, n = ("cpu", 1) if args.cpu else ("cuda", 20)
    t0 = time.perf_counter()
    results = {}
    for i, variant in enumerate(variants):
        if i and time.perf_counter() - t0 > args.budget_s:
            print(f"{variant}: skipped (past --budget-s)")
            continue
        trainer = build_trainer(variant, args.task, device, args.tiny)
        episode = trainer.env.max_episode_steps
        fill(trainer, min(trainer.replay.capacity, 4 * episode if args.tiny else 10_000), episode)
        start = time.perf_counter()
        for _ in range(2 if args.cpu else 4):  # compilation, Adam state, the first protected updates
            trainer._update(True)
        results[variant] = timed(lambda i, trainer=trainer: trainer._update(True), n)
        print(f"{variant}: built, filled and warmed up in {time.perf_counter() - start:.0f}s; update "
              f"{results[variant] * 1e3:.2f} ms; fast path {trainer.execution.describe()}")
        if i == 0:
            profiled(trainer, out, args.cpu)
        trainer.close()
        trainer = None  # free its GPU memory before the next variant
    gin.clear_config()
    print(f"\nDMC ({args.task}) update as the trainer runs it, {device}:")
    for variant, seconds in results.items():
        print(f"  {variant:<15} {seconds * 1e3:8.2f} ms {1 / seconds:8.1f} updates/s")


if __name__ == "__main__":
    main()
