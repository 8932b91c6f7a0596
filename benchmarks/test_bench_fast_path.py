"""Reference path vs GPU fast path: full-size MLR updates of Rainbow (Atari) and SAC
(DMC), on CUDA when available, else CPU.

Paths: "reference" (fp32, eager: the defaults), "bf16" (``precision='bf16'``), "compile"
(``compile=True``: each network), "bf16_compile" (both), "compile_update" and
"bf16_compile_update" (whole-update capture, ``compile_scope='update'``; the latter is what
``gin/fast/*.gin`` select on a GPU) and "bf16_compile_update_cudagraphs" (plus
``compile_mode='reduce-overhead'``). The
compiled paths run on CUDA only: inductor needs minutes per compilation on a CPU. Each
benchmark's ``extra_info`` holds the device, what the fast path actually ran (its
``describe()``) and updates/s. Full size costs seconds per update on a CPU, so everything here
runs only with ``--benchmark-enable`` (``tox -e bench -- -k fast_path``).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from mlr_registry.agents.rainbow import Rainbow
from mlr_registry.agents.sac import SAC
from mlr_registry.batch import Batch
from mlr_registry.decoders.transformer import TransformerDecoder
from mlr_registry.execution import Execution
from mlr_registry.losses.mlr import MLRLoss
from mlr_registry.maskers.cube import CubeMasker

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
WHOLE = {"compile": True, "compile_scope": "update"}
PATHS = {"reference": {}, "bf16": {"precision": "bf16"}, "compile": {"compile": True},
         "bf16_compile": {"precision": "bf16", "compile": True},
         "compile_update": WHOLE, "bf16_compile_update": {"precision": "bf16", **WHOLE},
         "bf16_compile_update_cudagraphs": {"precision": "bf16", "compile_mode": "reduce-overhead", **WHOLE}}
ROUNDS = 20 if DEVICE == "cuda" else 2


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _skip_unless_runnable(benchmark, path: str) -> None:
    if benchmark.disabled:
        pytest.skip("full-size fast-path benchmarks run only with --benchmark-enable (tox -e bench -- -k fast_path)")
    if "compile" in path and DEVICE != "cuda":
        pytest.skip("torch.compile benchmarks run on CUDA only (inductor takes minutes per compilation on a CPU)")


def _executed(agent, path: str):
    """``agent`` with the path's execution settings applied, as the trainer applies them."""
    execution = Execution(**PATHS[path])
    execution.apply(agent)
    return agent, execution


def _time(benchmark, execution, step, path: str) -> dict[str, float]:
    def timed():
        metrics = step()
        _sync()
        return metrics

    timed()  # warm-up: compilation, Adam state, cuDNN autotuning
    metrics = benchmark.pedantic(timed, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(device=DEVICE, path=path, **execution.describe())
    if benchmark.stats is not None:
        benchmark.extra_info["updates_per_s"] = 1.0 / benchmark.stats.stats.mean
    assert all(math.isfinite(v) for v in metrics.values())
    return metrics


@pytest.mark.parametrize("objective", ["baseline", "mlr"])
@pytest.mark.parametrize("path", list(PATHS))
def test_bench_fast_path_rainbow_update(benchmark, path, objective):
    """Atari full size: NatureCNN (32, 64, 64), batch 32, 26 steps; MLR over 16 steps (the
    3,136-d two-block transformer over 32 sequences) or none (the Baseline)."""
    _skip_unless_runnable(benchmark, path)
    b, t, num_actions = 32, 26, 6
    torch.manual_seed(0)
    aux = [MLRLoss(masker=CubeMasker())] if objective == "mlr" else []
    agent, execution = _executed(Rainbow((4, 84, 84), num_actions, device=DEVICE, aux_losses=aux), path)
    g = torch.Generator().manual_seed(0)
    batch = Batch(obs=torch.randint(0, 256, (b, t, 4, 84, 84), dtype=torch.uint8, generator=g),
                  action=torch.randint(0, num_actions, (b, t), generator=g), reward=torch.zeros(b, t),
                  done=torch.zeros(b, t, dtype=torch.bool), returns=torch.randn(b, 16, generator=g),
                  done_n=torch.zeros(b, 16, dtype=torch.bool), weights=torch.ones(b),
                  indices=torch.arange(b)).to(DEVICE)
    metrics = _time(benchmark, execution, lambda: agent.update(batch), path)
    assert ("mlr_loss" in metrics) == (objective == "mlr") and "rl_loss" in metrics


@pytest.mark.parametrize("objective", ["baseline", "mlr"])
@pytest.mark.parametrize("path", list(PATHS))
def test_bench_fast_path_sac_update(benchmark, path, objective):
    """DMC full size: SAC batch 512 (64 filters, 50-d features, hidden 1024), plus MLR on 128
    sequences of 16 frames or none (the Baseline), on an even step (critic, aux, actor + α,
    target EMAs)."""
    _skip_unless_runnable(benchmark, path)
    num_actions = 6
    torch.manual_seed(0)
    loss = MLRLoss(masker=CubeMasker(patch_size=10, block_size=8),
                   decoder=functools.partial(TransformerDecoder, init="trunc_normal"), target_tau=0.05,
                   projector="mlp", predictor="mlp", unnormalized_masked_input=False, init="trunc_normal",
                   reinit_encoder_linear=True, lr_warmup=6000)
    agent, execution = _executed(SAC((9, 100, 100), num_actions, device=DEVICE,
                                     aux_losses=[loss] if objective == "mlr" else []), path)
    b, sb, st = 512, 128, 16
    transitions = {"obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, device=DEVICE),
                   "next_obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, device=DEVICE),
                   "action": torch.rand(b, num_actions, device=DEVICE) * 2 - 1,
                   "reward": torch.rand(b, device=DEVICE), "not_done": torch.ones(b, device=DEVICE)}
    sequences = Batch(obs=torch.randint(0, 256, (sb, st, 9, 100, 100), dtype=torch.uint8, device=DEVICE),
                      action=torch.rand(sb, st, num_actions, device=DEVICE) * 2 - 1,
                      reward=torch.zeros(sb, st, device=DEVICE), done=torch.zeros(sb, st, dtype=torch.bool,
                                                                                   device=DEVICE))
    metrics = _time(benchmark, execution, lambda: agent.update(transitions, sequences, 0), path)
    assert {"critic_loss", "actor_loss"} <= set(metrics) and ("mlr_loss" in metrics) == (objective == "mlr")
