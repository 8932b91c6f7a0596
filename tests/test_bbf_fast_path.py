"""The execution layer on BBF, as for the other agents (tests/test_fast_path.py): bf16 autocast
against fp32, and compiled networks and whole-update capture against eager, resets included.
The CUDA variants need a GPU (tools/gpu_check.sh)."""

from __future__ import annotations

import functools

import pytest
import torch
from test_fast_path import (
    COMPILE_TOL,
    LOSS_ATOL,
    LOSS_RTOL,
    assert_fp32_master_state,
    assert_grads_aligned,
    assert_losses_close,
    assert_params_close,
    executed,
)

from mlr_registry.agents.bbf import BBF
from mlr_registry.batch import Batch
from mlr_registry.encoders.impala_cnn import ImpalaCNN
from mlr_registry.execution import compilation
from mlr_registry.execution.compilation import CompiledStep
from mlr_registry.losses.spr import SPRLoss


def bbf_spr(**settings) -> BBF:
    torch.manual_seed(0)
    spr = SPRLoss(target="agent", share_latent=True, norm="none", init="xavier", renormalize_eps=1e-5,
                  normalize_eps=1e-12, jumps=2)
    agent = BBF((4, 84, 84), 4, encoder=functools.partial(ImpalaCNN, channels=(4, 8, 8), width_scale=1),
                hidden_size=32, aux_losses=[spr], max_update_horizon=3, update_horizon=2, anneal_period=4,
                reset_every=2, no_resets_after=100, shrink_perturb=("encoder", "aux_losses.0.transition_model"))
    return executed(agent, **settings)


def bbf_batch(b: int = 4, t: int = 4) -> Batch:
    g = torch.Generator().manual_seed(5)
    return Batch(obs=torch.randint(0, 256, (b, t, 4, 84, 84), dtype=torch.uint8, generator=g),
                 action=torch.randint(0, 4, (b, t), generator=g), reward=torch.randn(b, t, generator=g),
                 done=torch.zeros(b, t, dtype=torch.bool), weights=torch.rand(b, generator=g) + 0.5,
                 indices=torch.arange(b))


def run(agent: BBF, batch: Batch, seed: int, env_step: int):
    torch.manual_seed(seed)  # augmentation and reset draws: the same numbers for both paths
    metrics = agent.update(batch)
    agent.set_step(env_step)
    return metrics


def test_bbf_bf16_matches_fp32_losses_and_gradients():
    ref, fast = bbf_spr(), bbf_spr(precision="bf16")
    batch = bbf_batch()
    m_ref, m_fast = run(ref, batch, 7, 0), run(fast, batch, 7, 0)
    assert {"rl_loss", "spr_loss", "total_loss"} <= set(m_ref)
    assert_losses_close(m_ref, m_fast, LOSS_RTOL, LOSS_ATOL)
    assert m_fast["rl_loss"] != m_ref["rl_loss"]  # bf16 really ran
    assert assert_grads_aligned(ref, fast) >= 3  # encoder, head, transition model, predictor
    assert_fp32_master_state(fast, [fast.optimizer])
    torch.testing.assert_close(m_fast.priorities, m_ref.priorities, rtol=5e-2, atol=1e-3)


@pytest.mark.parametrize("scope", ["networks", "update"])
def test_bbf_compiled_matches_eager_across_a_reset(monkeypatch, scope):
    monkeypatch.setattr(compilation, "DEFAULT_COMPILE_BACKEND", "aot_eager")
    ref, fast = bbf_spr(), bbf_spr(compile=True, compile_scope=scope)
    assert isinstance(fast._learn_phase, CompiledStep) == (scope == "update")
    batch = bbf_batch()
    for env_step, seed in enumerate((7, 8, 9)):  # a reset after the second update (2 stored steps)
        m_ref, m_fast = run(ref, batch, seed, env_step), run(fast, batch, seed, env_step)
        assert_losses_close(m_ref, m_fast, 0.0, COMPILE_TOL)
        torch.testing.assert_close(m_fast.priorities, m_ref.priorities, rtol=COMPILE_TOL, atol=COMPILE_TOL)
    assert ref.resets.resets == fast.resets.resets == 1
    assert fast.execution.compile_enabled  # no fallback to eager: the compiled path really ran
    assert_params_close(ref, fast, COMPILE_TOL)
    obs = batch.obs[:, 0]
    assert torch.equal(fast.act(obs), ref.act(obs))
