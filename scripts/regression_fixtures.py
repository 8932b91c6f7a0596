"""Regression fixtures: one full-size Atari MLR update and one DMC SAC+MLR update, pinned.

Each fixture builds the agent (and, for Atari, the replay) from the shipped gin files, so it
follows the faithful defaults; fills in seeded synthetic data; runs exactly one update on the
CPU; and records what that update produced:

- ``metrics``: every loss / metric the update returns (Atari also the KL priorities it wrote
  back to the replay);
- ``grad_norms``: per parameter group (a top-level module of the agent; an aux loss's
  top-level modules separately), the norm of every gradient accumulated into the group's
  parameters during the update, before clipping (SAC's several backward passes all count);
- ``params``: per group, after the optimizer step(s): the parameters' float64 sum and sum of
  squares (the checksum), their largest magnitude, and the step itself (after - before): its
  sum, sum of squares and L1 norm.

``tests/test_regression_fixtures.py`` recomputes them and compares with the JSON files in
``tests/fixtures/``; any change of the numbers a real update produces fails it. Re-pin only
after a deliberate, explained change of the update:

    python scripts/regression_fixtures.py            # compare, print the differences
    python scripts/regression_fixtures.py --write    # re-pin tests/fixtures/*.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gin
import numpy as np
import torch

from mlr_registry import config, registry
from mlr_registry.batch import Batch
from mlr_registry.execution import Execution
from mlr_registry.training import experiment as _experiment  # noqa: F401 - registers `experiment` with gin
from mlr_registry.training.rng import seed_everything

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SEED = 0

# Relative noise allowed on each recorded float. The update runs in float32 (eps 1.2e-7); what
# differs between runs of the same code is the order of floating-point reductions (matmul /
# conv blocking and the number of torch threads: CI runs one per xdist worker, a re-pin may
# run several), ~1e-6 relative per reduction, grown through two 3,136-d transformer blocks,
# softmaxes and Adam's g / (|g| + eps). Measured on the development CPU, 2 threads against the
# fixtures pinned with 1: Atari within 1e-6 everywhere, DMC within 4e-6 (q_mean, the predictor's
# tiny warm-up step). 1e-4 keeps a margin of 25 over that for other CPUs' kernels and is still
# far below what a real change moves: switching the done_n quirk off moves 27 Atari values, the
# least of them (head.max_abs) by 3e-4 relative, the RL loss by 6e-4, the priorities by 3x.
RTOL = 1e-4
# Torch threads the fixtures are pinned and compared at. Another CPU, at one thread against two,
# moved the DMC actor's gradient norm by 6e-4: DMC's actor and MLR steps follow the critic's first
# Adam step, which moves each weight by about ±lr whatever its gradient's size, so a near-zero
# gradient's sign, set by rounding, shows. At two threads every CPU tried so far matched.
PIN_THREADS = 2


# ------------------------------------------------------------------------------ recording

def _group(name: str) -> str:
    """Parameter group of a parameter name: its top-level module (aux losses: their modules)."""
    parts = name.split(".")
    if parts[0] == "aux_losses" and len(parts) > 3:
        return ".".join(parts[:3])
    return parts[0] if len(parts) > 1 else name  # a direct parameter (SAC's log_alpha) is its own group


def _parameters(agent: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = defaultdict(list)
    for name, p in agent.named_parameters():  # shared parameters once, under their first name
        groups[_group(name)].append((name, p))
    return dict(sorted(groups.items()))


class _GradRecorder:
    """Sum of squared gradients per group, read when each backward pass accumulates a leaf's
    gradient (``register_post_accumulate_grad_hook``): before any clipping or optimizer step."""

    def __init__(self, groups: dict[str, list[tuple[str, torch.nn.Parameter]]]):
        self.sq: dict[str, float] = defaultdict(float)
        self.handles = []
        for group, named in groups.items():
            for _, p in named:
                if p.requires_grad:
                    self.handles.append(p.register_post_accumulate_grad_hook(self._hook(group)))

    def _hook(self, group: str) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            self.sq[group] += float(p.grad.detach().double().pow(2).sum())
        return hook

    def norms(self) -> dict[str, float]:
        for h in self.handles:
            h.remove()
        return {g: math.sqrt(v) for g, v in sorted(self.sq.items())}


def _param_stats(groups: dict[str, list[tuple[str, torch.nn.Parameter]]],
                 before: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    stats = {}
    for group, named in groups.items():
        s = {"sum": 0.0, "sum_sq": 0.0, "max_abs": 0.0, "step_sum": 0.0, "step_sq": 0.0, "step_l1": 0.0}
        for name, p in named:
            now = p.detach().double()
            step = now - before[name].double()
            s["sum"] += float(now.sum())
            s["sum_sq"] += float(now.pow(2).sum())
            s["max_abs"] = max(s["max_abs"], float(now.abs().max()))
            s["step_sum"] += float(step.sum())
            s["step_sq"] += float(step.pow(2).sum())
            s["step_l1"] += float(step.abs().sum())
        stats[group] = s
    return stats


def _record(agent: torch.nn.Module, run_update: Callable[[], dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    groups = _parameters(agent)
    before = {name: p.detach().clone() for named in groups.values() for name, p in named}
    recorder = _GradRecorder(groups)
    metrics = run_update()
    return {
        "info": info,
        "trainable_parameters": sum(p.numel() for p in agent.parameters() if p.requires_grad),
        "metrics": {k: float(v) for k, v in sorted(metrics.items()) if isinstance(v, (int, float, torch.Tensor))},
        "grad_norms": recorder.norms(),
        "params": _param_stats(groups, before),
    }


class _gin:
    """The gin files (and bindings) parsed for the block, cleared after."""

    def __init__(self, files: list[str], bindings: tuple[str, ...] = ()):
        self.files, self.bindings = files, bindings

    def __enter__(self) -> None:
        registry.load_all()
        gin.clear_config()
        config.parse([REPO / f for f in self.files], self.bindings)

    def __exit__(self, *exc: object) -> None:
        gin.clear_config()


# ------------------------------------------------------------------------------ the fixtures

ATARI_GIN = ["gin/atari_mlr.gin"]
# capacity: the sampled data do not depend on it before a wrap; 1,000 keeps the test's memory low
ATARI_BINDINGS = ("replays.prioritized_sequence.capacity = 1000",)
ATARI_STEPS, ATARI_ACTIONS, ATARI_DONE_RATE = 400, 6, 0.06


def _atari_content(g: torch.Generator) -> Iterator[tuple[torch.Tensor, int, float, bool]]:
    """Seeded env steps as the Atari env hands them to the replay: the stack zeroed at a done
    (life loss or game over; ~6% of steps, so many sampled windows cross one)."""
    stack = torch.zeros(4, 84, 84, dtype=torch.uint8)
    stack[-1] = torch.randint(0, 256, (84, 84), generator=g, dtype=torch.uint8)
    for _ in range(ATARI_STEPS):
        action = int(torch.randint(0, ATARI_ACTIONS, (), generator=g))
        reward = float(torch.randint(-1, 2, (), generator=g))
        done = bool(torch.rand((), generator=g) < ATARI_DONE_RATE)
        yield stack.clone(), action, reward, done
        if done:
            stack.zero_()
        stack = torch.cat([stack[1:], torch.randint(0, 256, (1, 84, 84), generator=g, dtype=torch.uint8)])


def atari_replay_batch(bindings: tuple[str, ...] = ()) -> tuple[Any, Batch]:
    """The replay from gin/atari_mlr.gin filled with 400 seeded steps, and its batch of 32 at
    step 2000 (beta 0.4)."""
    with _gin(ATARI_GIN, ATARI_BINDINGS + tuple(bindings)):
        replay = registry.build("replay", "prioritized_sequence", observation_shape=(4, 84, 84), device="cpu",
                                seed=SEED)
    for step in _atari_content(torch.Generator().manual_seed(SEED)):
        replay.add(*step)
    replay.set_step(2000)
    return replay, replay.sample(32)


def atari_mlr_update(bindings: tuple[str, ...] = ()) -> dict[str, Any]:
    """Replay and Rainbow + MLR from gin/atari_mlr.gin (full size), a seeded replay of 400 steps,
    one batch of 32 at step 2000 (beta 0.4), one update, its priorities written back."""
    replay, batch = atari_replay_batch(bindings)
    with _gin(ATARI_GIN, ATARI_BINDINGS + tuple(bindings)):
        seed_everything(SEED)
        agent = registry.build("agent", "rainbow", observation_shape=(4, 84, 84), num_actions=ATARI_ACTIONS,
                               device="cpu")
        Execution().apply(agent)  # as the trainer does (the defaults: eager fp32, attention kernel 'auto')
    seed_everything(SEED + 1)  # the update's own draws: noise, augmentation, masks

    def run() -> dict[str, Any]:
        update = agent.update(batch)
        metrics = dict(update)
        replay.update_priorities(batch.indices, update.priorities)
        priorities = replay.priorities[batch.indices]
        metrics.update(written_priority_sum=priorities.sum(), written_priority_sq=priorities.pow(2).sum(),
                       done_n0_count=batch.done_n[:, 0].sum(), done_count=batch.done[:, :16].any(1).sum())
        return metrics

    info = {"gin": ATARI_GIN, "bindings": list(ATARI_BINDINGS), "seed": SEED, "batch_size": 32,
            "replay_steps": ATARI_STEPS, "num_actions": ATARI_ACTIONS}
    return _record(agent, run, info)


DMC_GIN = ["gin/dmc_mlr.gin", "gin/dmc/cheetah_run.gin"]
# The networks, losses and optimizers are the gin defaults; the batches are smaller than the
# paper's 512 transitions / 128 sequences (seconds instead of minutes on a CPU).
DMC_BATCH, DMC_SEQUENCES, DMC_ACTIONS = 32, 8, 6


def dmc_mlr_update(bindings: tuple[str, ...] = ()) -> dict[str, Any]:
    """SAC + MLR from gin/dmc_mlr.gin + gin/dmc/cheetah_run.gin (full-size networks), seeded
    synthetic transitions and sequences, one update at step 0 (critic, MLR, actor + alpha, EMAs)."""
    with _gin(DMC_GIN, tuple(bindings)):
        seed_everything(SEED)
        agent = registry.build("agent", "sac", observation_shape=(9, 100, 100), num_actions=DMC_ACTIONS,
                               device="cpu")
        Execution().apply(agent)  # as the trainer does (the defaults: eager fp32, attention kernel 'auto')
        sequence_length = config.query("losses.mlr.sequence_length")
    g = torch.Generator().manual_seed(SEED)
    b, sb = DMC_BATCH, DMC_SEQUENCES
    transitions = {"obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, generator=g),
                   "next_obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, generator=g),
                   "action": torch.rand(b, DMC_ACTIONS, generator=g) * 2 - 1,
                   "reward": torch.rand(b, generator=g), "not_done": torch.ones(b)}
    st = sequence_length
    sequences = Batch(obs=torch.randint(0, 256, (sb, st, 9, 100, 100), dtype=torch.uint8, generator=g),
                      action=torch.rand(sb, st, DMC_ACTIONS, generator=g) * 2 - 1,
                      reward=torch.rand(sb, st, generator=g), done=torch.zeros(sb, st, dtype=torch.bool))
    seed_everything(SEED + 1)

    def run() -> dict[str, Any]:
        return dict(agent.update(transitions, sequences, 0))

    info = {"gin": DMC_GIN, "seed": SEED, "batch_size": b, "sequences": sb, "num_actions": DMC_ACTIONS}
    return _record(agent, run, info)


FIXTURE_BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {"atari_mlr_update": atari_mlr_update,
                                                              "dmc_mlr_update": dmc_mlr_update}


# ------------------------------------------------------------------------------ comparing

def differences(expected: dict[str, Any], actual: dict[str, Any], rtol: float = RTOL) -> list[str]:
    """Every recorded value of ``actual`` outside the tolerance of ``expected``, one line each.

    Metrics and gradient norms: relative, ``rtol``. Parameters: the step (after - before) is
    what an update changes, so its sum is compared with ``rtol`` times its L1 norm, its sum of
    squares and L1 norm relatively; the checksum (sum, sum of squares after the step) differs
    from the pinned one by the step's differences only: the sum by at most ``rtol * step_l1``,
    the sum of squares by at most ``rtol * step_l1 * 2 * (max_abs + max step)``.
    """
    out: list[str] = []

    def close(key: str, want: float, got: float, atol: float = 0.0, rel: float = rtol) -> None:
        if not math.isclose(got, want, rel_tol=rel, abs_tol=atol):
            out.append(f"{key}: pinned {want!r}, now {got!r}")

    for section in ("trainable_parameters",):
        if expected[section] != actual[section]:
            out.append(f"{section}: pinned {expected[section]}, now {actual[section]}")
    for section in ("metrics", "grad_norms", "params"):
        if set(expected[section]) != set(actual[section]):
            out.append(f"{section}: pinned keys {sorted(expected[section])}, now {sorted(actual[section])}")
    for key in sorted(set(expected["metrics"]) & set(actual["metrics"])):
        close(f"metrics.{key}", expected["metrics"][key], actual["metrics"][key], atol=1e-12)
    for key in sorted(set(expected["grad_norms"]) & set(actual["grad_norms"])):
        close(f"grad_norms.{key}", expected["grad_norms"][key], actual["grad_norms"][key], atol=1e-12)
    for key in sorted(set(expected["params"]) & set(actual["params"])):
        want, got = expected["params"][key], actual["params"][key]
        l1 = want["step_l1"]
        close(f"params.{key}.step_l1", l1, got["step_l1"], atol=1e-12)
        close(f"params.{key}.step_sq", want["step_sq"], got["step_sq"], atol=1e-24, rel=2 * rtol)
        close(f"params.{key}.step_sum", want["step_sum"], got["step_sum"], atol=rtol * l1 + 1e-12, rel=0)
        close(f"params.{key}.sum", want["sum"], got["sum"], atol=rtol * l1 + 1e-9, rel=0)
        bound = 2 * (want["max_abs"] + math.sqrt(want["step_sq"]))
        close(f"params.{key}.sum_sq", want["sum_sq"], got["sum_sq"], atol=rtol * l1 * bound + 1e-9, rel=0)
        close(f"params.{key}.max_abs", want["max_abs"], got["max_abs"])
    return out


def fixture_path(name: str) -> Path:
    return FIXTURES / f"{name}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="re-pin tests/fixtures/*.json (a deliberate change)")
    parser.add_argument("names", nargs="*", default=list(FIXTURE_BUILDERS), help="fixtures (default: all)")
    parser.add_argument("--bind", action="append", default=[], help="extra gin binding (to see what moves)")
    parser.add_argument("--rtol", type=float, default=RTOL, help="comparison tolerance (to measure the noise)")
    parser.add_argument("--threads", type=int, default=PIN_THREADS,
                        help=f"torch CPU threads (default {PIN_THREADS}, as pinned; see PIN_THREADS)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    failed = False
    for name in args.names:
        record = FIXTURE_BUILDERS[name](tuple(args.bind))
        path = fixture_path(name)
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
            print(f"wrote {path.relative_to(REPO)}")
            continue
        diff = differences(json.loads(path.read_text()), record, args.rtol)
        failed |= bool(diff)
        print(f"{name}: " + ("matches" if not diff else f"{len(diff)} differences\n  " + "\n  ".join(diff)))
    return 1 if failed else 0


if __name__ == "__main__":
    np.set_printoptions(precision=10)
    sys.exit(main())
