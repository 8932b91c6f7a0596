"""Where the fast path's time goes: the Atari training loop without the emulator (act, replay add,
two × (sample, update, priority write-back), as ``trainers.atari100k`` runs it), at full size,
timed and profiled with ``torch.profiler``; then the isolated update of each A/B variant.

    python benchmarks/gpu/gpu_profile.py --out gpu_out                          # MLR, on a CUDA machine
    python benchmarks/gpu/gpu_profile.py --objective baseline --variants fast,eager_fp32
    python benchmarks/gpu/gpu_profile.py --out /tmp/p --cpu --tiny              # the code path, on a CPU

Variants (``--variants``, the first is profiled in the loop): ``fast`` (bf16 + whole-update
inductor, no CUDA graphs), ``cudagraphs`` (+ compile_mode 'reduce-overhead': gin/fast's setting), ``sdpa``
(fast with the decoder's attention forced to fused SDPA), ``channels_last`` (fast with
``channels_last = True``: conv weights and activations in NHWC memory), ``cudnn_benchmark``
(cudagraphs with cuDNN's algorithm autotuning; compare it with ``cudagraphs``),
``cudagraphs_channels_last`` (cudagraphs in NHWC: ``channels_last`` was measured only without
CUDA graphs, where its extra kernels' launches count as much as their GPU time), ``eager_bf16``, ``eager_fp32`` (the
reference path). Each compiled variant costs about a minute of compilation on a GPU.

Prints: loop and update wall times per update, the GPU's busy fraction in the profiled loop
(summed kernel time / wall time), kernel launches per update, the top ops by GPU and by CPU
time (the full tables go to OUT/profile.txt), then one line per variant.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import torch
from gpu_timing import add_variants, chosen_variants, gpu_kernels, sync, timed
from torch.profiler import ProfilerActivity, profile

from mlr_registry.agents.rainbow import Rainbow
from mlr_registry.decoders.transformer import TransformerDecoder
from mlr_registry.encoders.nature_cnn import NatureCNN
from mlr_registry.execution import Execution
from mlr_registry.execution.transfer import HostCopy
from mlr_registry.losses.mlr import MLRLoss
from mlr_registry.replay.prioritized_sequence_replay import PrioritizedSequenceReplay

A, STORED, BATCH, SHAPE = 6, 5000, 32, (4, 84, 84)


FAST = {"precision": "bf16", "compile": True, "compile_scope": "update"}
# name -> (execution settings, attention kernel)
VARIANTS = {"fast": ({**FAST}, "auto"),
            "cudagraphs": ({**FAST, "compile_mode": "reduce-overhead"}, "auto"),
            "sdpa": ({**FAST}, "sdpa"), "channels_last": ({**FAST, "channels_last": True}, "auto"),
            "cudnn_benchmark": ({**FAST, "compile_mode": "reduce-overhead", "cudnn_benchmark": True}, "auto"),
            "cudagraphs_channels_last": ({**FAST, "compile_mode": "reduce-overhead", "channels_last": True}, "auto"),
            "eager_bf16": ({"precision": "bf16"}, "auto"), "eager_fp32": ({}, "auto")}


def build_agent(device: str, variant: str, objective: str = "mlr", tiny: bool = False) -> Rainbow:
    """Rainbow(+MLR) at the paper's size (``tiny``: 4-8-4 conv channels, 196-d latents, a quick
    check of this script) with a VARIANTS entry's switches (all off on a CPU)."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = False  # process-wide: only the variant that asks turns it on
    switches, attention = VARIANTS[variant]
    small = {"encoder": functools.partial(NatureCNN, channels=(4, 8, 4)), "hidden_size": 32} if tiny else {}
    aux = [MLRLoss(decoder=TransformerDecoder)] if objective == "mlr" else []
    agent = Rainbow(SHAPE, A, device=device, aux_losses=aux, **small)
    agent.execution = Execution(**(switches if device == "cuda" else {}), attention=attention)  # kept for the printout
    agent.execution.apply(agent)
    return agent


def build_replay(device: str) -> PrioritizedSequenceReplay:
    """The trainer's replay (compiled on CUDA, as the fast config) holding STORED steps."""
    replay = PrioritizedSequenceReplay(SHAPE, device=device, seed=0)
    Execution(replay_compile=device == "cuda").apply_replay(replay)
    frames = torch.randint(0, 256, (64, *SHAPE), dtype=torch.uint8).numpy()
    for t in range(STORED):
        replay.add(frames[t % 64], t % A, float(t % 3 - 1), t % 500 == 499)
    replay.set_step(STORED)
    return replay


def loop_step(agent: Rainbow, replay: PrioritizedSequenceReplay, obs: torch.Tensor, t: int,
              pipelined: bool = False) -> list:
    """One env step of the trainer's loop as the fast config runs it, the emulator excepted: act
    (a host sync for the action), store obs and action, two updates with their priority
    write-backs (the env would step beside them), then the step's reward and done. ``pipelined``:
    as ``execution.pipeline_updates = True`` runs it, the action stored on the device and
    read back after the updates are queued (the host waits for the acting alone)."""
    actions = agent.act(obs, epsilon=0.0, greedy=False)
    action = actions[0] if pipelined else int(actions[0])
    action_host = HostCopy(actions[0]) if pipelined else None
    replay.add_pending(obs, action)  # the observation acting saw, already on the device
    replay.set_step(STORED + t)
    out = []
    for _ in range(2):
        batch = replay.sample(BATCH)
        out.append(agent.update(batch))
        replay.update_priorities(batch.indices, out[-1].priorities)
    if action_host is not None:
        int(action_host.result())  # the env would step now, while the GPU runs the updates
    replay.complete_pending(0.0, False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_out")
    parser.add_argument("--cpu", action="store_true", help="eager, on the CPU, few steps (checks the script)")
    parser.add_argument("--budget-s", type=float, default=200, help="skip the remaining variants past this")
    parser.add_argument("--tiny", action="store_true", help="tiny networks (a quick check of this script)")
    parser.add_argument("--objective", choices=("mlr", "baseline"), default="mlr")
    add_variants(parser, VARIANTS, "fast,cudagraphs", "profiled in the loop")
    args = parser.parse_args()
    variants = chosen_variants(parser, args.variants, VARIANTS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    device = "cpu" if args.cpu else "cuda"
    n = 1 if args.cpu else 20
    agent, replay = build_agent(device, variants[0], args.objective, args.tiny), build_replay(device)
    obs = torch.randint(0, 256, SHAPE, dtype=torch.uint8, device=device)
    for t in range(2 if args.cpu else 4):  # compilation, Adam state, the first two protected updates
        loop_step(agent, replay, obs, t)
    print(f"{args.objective} {variants[0]}: built and compiled in {time.perf_counter() - t0:.0f}s; "
          f"fast path {agent.execution.describe()}")
    per_step = timed(lambda i: loop_step(agent, replay, obs, 10 + i), n)
    print(f"loop without the emulator: {per_step / 2 * 1e3:.2f} ms per update ({2 / per_step:.1f} updates/s)")
    loop_step(agent, replay, obs, 9, pipelined=True)  # the pinned allocator's first blocks
    per_step = timed(lambda i: loop_step(agent, replay, obs, 30 + i, pipelined=True), n)
    print(f"loop without the emulator, pipeline_updates: {per_step / 2 * 1e3:.2f} ms per update "
          f"({2 / per_step:.1f} updates/s)")
    batch = replay.sample(BATCH)
    per_update = timed(lambda i: agent.update(batch), n)
    print(f"update alone: {per_update * 1e3:.2f} ms ({1 / per_update:.1f} updates/s)")
    priorities = agent.update(batch).priorities
    sample = timed(lambda i: replay.update_priorities(replay.sample(BATCH).indices, priorities), n)
    print(f"sample + update_priorities: {sample * 1e3:.2f} ms")
    act = timed(lambda i: int(agent.act(obs, epsilon=0.0, greedy=False)[0]), n)
    step = agent._greedy_actions  # a CompiledStep where acting compiles, else the method
    compiled_act = getattr(step, "compiled", None)
    if compiled_act is not None:
        step.compiled = None  # the eager act, same weights
    eager_act = timed(lambda i: int(agent.act(obs, epsilon=0.0, greedy=False)[0]), n)
    if compiled_act is not None:
        step.compiled = compiled_act
    print(f"act (with its host sync): {act * 1e3:.2f} ms as the loop runs it "
          f"({'compiled' if compiled_act is not None else 'eager'}), {eager_act * 1e3:.2f} ms eagerly")
    profile_loop(agent, replay, obs, out, args.cpu)

    results = {variants[0]: per_update}
    for variant in variants[1:]:
        if time.perf_counter() - t0 > args.budget_s:
            print(f"{variant}: skipped (past --budget-s)")
            continue
        other = build_agent(device, variant, args.objective, args.tiny)  # same replay batch
        for _ in range(4):
            other.update(batch)
        results[variant] = timed(lambda i, agent=other: agent.update(batch), n)
        print(f"{variant}: update alone {results[variant] * 1e3:.2f} ms; fast path {other.execution.describe()}")
        other = None  # free its GPU memory before the next variant
    print(f"\n{args.objective} update alone, {device}:")
    for variant, seconds in results.items():
        print(f"  {variant:<14} {seconds * 1e3:8.2f} ms {1 / seconds:8.1f} updates/s")


def profile_loop(agent: Rainbow, replay: PrioritizedSequenceReplay, obs: torch.Tensor, out: Path,
                 cpu: bool) -> None:
    """Profiles a few loop steps: GPU busy fraction, kernels per update, top ops (OUT/profile.txt)."""
    activities = [ProfilerActivity.CPU] + ([] if cpu else [ProfilerActivity.CUDA])
    steps = 1 if cpu else 5
    sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for i in range(steps):
            loop_step(agent, replay, obs, 100 + i)
        sync()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels, busy = gpu_kernels(prof)
    print(f"profiled loop: {wall / (2 * steps) * 1e3:.2f} ms per update; GPU kernels {kernels / (2 * steps):.0f} "
          f"per update, busy {busy / wall:.0%} of the wall time")
    key = "self_cpu_time_total" if cpu else "self_device_time_total"
    table = events.table(sort_by=key, row_limit=25)
    cpu_table = events.table(sort_by="self_cpu_time_total", row_limit=25)
    (out / "profile.txt").write_text(f"by {key}\n{table}\n\nby self CPU time\n{cpu_table}\n")
    print(events.table(sort_by=key, row_limit=12, max_name_column_width=48))
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))


if __name__ == "__main__":
    main()
