"""Sinusoidal table and the transformer decoder: layout, positions, blocks, init, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mlr_registry.decoders.positional import sinusoidal_table
from mlr_registry.decoders.transformer import Attention, TransformerDecoder
from mlr_registry.errors import ConfigError
from mlr_registry.execution import Execution
from mlr_registry.execution.attention import choose_attention


def _inputs(b=2, t=6, d=8, a=5, discrete=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, t, d, generator=g)
    actions = (torch.randint(0, a, (b, t), generator=g) if discrete
               else torch.randn(b, t, a, generator=g))
    return latents, actions


# --- sinusoidal table -------------------------------------------------------------------------

def test_sinusoidal_values_by_hand():
    pe = sinusoidal_table(4, 6)
    assert pe.shape == (4, 6) and pe.dtype == torch.float32
    for p in range(4):
        for i in range(3):
            angle = p * 10000 ** (-2 * i / 6)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert pe[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0))
    assert pe[3, 2].item() == pytest.approx(math.sin(3 * 10000 ** (-1 / 3)), abs=1e-6)


def test_sinusoidal_odd_dim():
    pe = sinusoidal_table(5, 5)
    assert pe.shape == (5, 5)
    for p in range(5):
        for c in range(5):
            angle = p * 10000 ** (-(c - c % 2) / 5)
            expected = math.sin(angle) if c % 2 == 0 else math.cos(angle)
            assert pe[p, c].item() == pytest.approx(expected, abs=1e-6)
    assert pe[2, 4].item() == pytest.approx(math.sin(2 * 10000 ** (-4 / 5)), abs=1e-6)
    assert sinusoidal_table(3, 1)[:, 0].tolist() == pytest.approx([0.0, math.sin(1), math.sin(2)])


# --- decoder ------------------------------------------------------------------------------------

def test_output_shape_discrete_and_continuous():
    dec = TransformerDecoder(dim=8, num_actions=5)
    latents, actions = _inputs()
    assert dec(latents, actions).shape == (2, 6, 8)
    cont = TransformerDecoder(dim=8, num_actions=3, discrete_actions=False)
    latents, actions = _inputs(a=3, discrete=False)
    assert cont(latents, actions).shape == (2, 6, 8)


def test_tokens_same_pe_on_state_and_action():
    dec = TransformerDecoder(dim=8, num_actions=5)
    latents, actions = _inputs()
    tokens = dec.tokens(latents, actions)
    assert tokens.shape == (2, 12, 8)  # [s_0..s_5, a_0..a_5]
    pe = sinusoidal_table(128, 8)[:6]
    assert torch.allclose(tokens[:, :6] - latents, pe.expand(2, -1, -1), atol=1e-6)
    embedded = dec.action_embedding(nn.functional.one_hot(actions, 5).float())
    assert torch.allclose(tokens[:, 6:] - embedded, pe.expand(2, -1, -1), atol=1e-6)


def test_concat_layout_equals_interleaved_layout():
    """Bidirectional attention with per-token PE is permutation-equivariant: DMC's interleaved
    [s0, a0, s1, a1, ...] gives the same state outputs as Atari's [s0..s5, a0..a5]."""
    torch.manual_seed(0)
    dec = TransformerDecoder(dim=8, num_actions=5, num_heads=2)
    latents, actions = _inputs()
    out = dec(latents, actions)
    x = rearrange(dec.tokens(latents, actions), "b (k t) d -> b (t k) d", k=2)  # interleave
    for block in dec.blocks:
        x = block(x)
    assert torch.allclose(out, x[:, 0::2], atol=1e-5)
    assert not torch.allclose(out, x[:, 1::2], atol=1e-3)  # and the action outputs are dropped


def test_actions_matter_unless_action_tokens_off():
    torch.manual_seed(0)
    latents, actions = _inputs()
    dec = TransformerDecoder(dim=8, num_actions=5)
    assert not torch.allclose(dec(latents, actions), dec(latents, (actions + 1) % 5))
    off = TransformerDecoder(dim=8, num_actions=5, action_tokens=False)
    assert off.action_embedding is None
    assert off.tokens(latents, actions).shape == (2, 6, 8)
    assert torch.equal(off(latents, actions), off(latents, (actions + 1) % 5))
    assert not any("action" in n for n, _ in off.named_parameters())


def test_parameter_list_no_qkv_bias_no_final_norm():
    dec = TransformerDecoder(dim=8, num_actions=5, depth=3, mlp_ratio=2.0)
    names = {n: tuple(p.shape) for n, p in dec.named_parameters()}
    assert names["blocks.0.attn.qkv.weight"] == (24, 8)
    assert "blocks.0.attn.qkv.bias" not in names
    assert names["blocks.0.attn.proj.bias"] == (8,)
    assert names["blocks.2.mlp.0.weight"] == (16, 8) and names["blocks.2.mlp.2.weight"] == (8, 16)
    assert names["action_embedding.weight"] == (8, 5) and names["action_embedding.bias"] == (8,)
    assert all(n.startswith(("blocks.", "action_embedding.")) for n in names)  # no final LayerNorm
    assert sum(isinstance(m, nn.LayerNorm) for m in dec.modules()) == 6  # 2 per block
    assert all(m.eps == 1e-5 for m in dec.modules() if isinstance(m, nn.LayerNorm))
    assert not any(isinstance(m, nn.Dropout) for m in dec.modules())
    d = 8  # per block: qkv 3d², proj d²+d, MLP 2·(2d²)+3d, 2 LayerNorms 4d
    per_block = 3 * d * d + d * d + d + 4 * d * d + 3 * d + 4 * d
    assert sum(p.numel() for p in dec.block_parameters()) == 3 * per_block
    assert "pe" not in dec.state_dict()  # fixed table: not checkpointed


def kernel(module: nn.Module, attention: str) -> nn.Module:
    """``module`` with the execution layer's attention kernel chosen by ``attention``."""
    choose_attention(module.modules(), attention)
    return module


@pytest.mark.parametrize("attention", ["auto", "sdpa", "math"])
def test_attention_heads_split_by_hand(attention):
    torch.manual_seed(0)
    attn = kernel(Attention(dim=8, num_heads=2), attention)
    x = torch.randn(3, 5, 8)
    q, k, v = attn.qkv(x).split(8, dim=-1)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) * 4 ** -0.5, dim=-1)
        heads.append(w @ v[..., sl])
    expected = attn.proj(torch.cat(heads, dim=-1))
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_attention_auto_uses_the_fused_kernel_only_up_to_head_dim_256():
    def fused(attn: Attention) -> bool:
        return attn.attend is F.scaled_dot_product_attention

    assert not fused(Attention(dim=256, num_heads=1))  # by itself: the written-out form
    assert fused(kernel(Attention(dim=256, num_heads=1), "auto"))  # DMC (50) and what FlashAttention takes
    assert not fused(kernel(Attention(dim=3136, num_heads=1), "auto"))  # Atari: the explicit softmax(q kᵀ) v
    assert fused(kernel(Attention(dim=3136, num_heads=16), "auto"))  # head dim 196
    assert fused(kernel(Attention(dim=3136, num_heads=1), "sdpa"))
    assert not fused(kernel(kernel(Attention(dim=64, num_heads=1), "sdpa"), "math"))  # and back


@pytest.mark.parametrize("dim, heads", [(300, 1), (48, 2)])
def test_sdpa_and_math_attention_give_the_same_decoder_outputs_and_gradients(dim, heads):
    """The switch changes how attention is computed, never what (fp32, CPU; head dim 300 is
    above the fused limit, 24 below it)."""
    outs, grads = [], []
    for attention in ("sdpa", "math"):
        torch.manual_seed(0)
        dec = kernel(TransformerDecoder(dim=dim, num_actions=5, num_heads=heads), attention)
        latents, actions = _inputs(b=3, t=8, d=dim)
        latents.requires_grad_(True)
        out = dec(latents, actions)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([latents.grad.flatten(), *(p.grad.flatten() for p in dec.parameters())]))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_block_is_pre_ln_residual():
    torch.manual_seed(0)
    dec = TransformerDecoder(dim=8, num_actions=5, depth=1)
    blk = dec.blocks[0]
    x = torch.randn(2, 4, 8)
    h = x + blk.attn(blk.norm1(x))
    expected = h + blk.mlp(blk.norm2(h))
    assert torch.allclose(blk(x), expected, atol=1e-6)
    assert isinstance(blk.mlp[1], nn.GELU)


@torch.no_grad()
def test_trunc_normal_init():
    torch.manual_seed(0)
    dec = TransformerDecoder(dim=64, num_actions=5, init="trunc_normal")
    linears = [m for m in dec.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 + 2 * 4
    for m in linears:
        assert float(m.weight.abs().max()) <= 0.02
        assert m.bias is None or bool((m.bias == 0).all())
    assert 0.008 < float(dec.blocks[0].mlp[0].weight.std()) < 0.013  # N(0, .02²) cut at ±1σ: σ≈.0108
    default = TransformerDecoder(dim=64, num_actions=5)
    assert float(default.blocks[0].attn.qkv.weight.abs().max()) > 0.05  # U(±1/√64)


def test_errors():
    with pytest.raises(ConfigError, match="num_heads"):
        TransformerDecoder(dim=10, num_actions=2, num_heads=3)
    with pytest.raises(ConfigError, match="depth"):
        TransformerDecoder(dim=8, num_actions=2, depth=0)
    with pytest.raises(ConfigError, match="mlp_ratio"):
        TransformerDecoder(dim=8, num_actions=2, mlp_ratio=0.0)
    with pytest.raises(ConfigError, match="init"):
        TransformerDecoder(dim=8, num_actions=2, init="xavier")
    with pytest.raises(ConfigError, match="attention = 'flash'; expected one of auto, sdpa, math"):
        Execution(attention="flash")
    dec = TransformerDecoder(dim=8, num_actions=5, max_len=4)
    with pytest.raises(ConfigError, match="max_len = 4"):
        dec(*_inputs(t=6))
    with pytest.raises(ValueError, match="latents"):
        dec(torch.zeros(2, 3, 7), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="discrete actions"):
        dec(torch.zeros(2, 3, 8), torch.zeros(2, 3, 5))


def test_width_projects_in_and_out_and_default_has_no_projection():
    default = TransformerDecoder(dim=8, num_actions=5)
    assert default.input_projection is None and default.output_projection is None and default.width == 8
    narrow = TransformerDecoder(dim=8, num_actions=5, width=4, num_heads=2)
    assert narrow.width == 4 and narrow.pe.shape == (128, 4)
    assert narrow.action_embedding.weight.shape == (4, 5)
    assert all(block.attn.qkv.weight.shape == (12, 4) for block in narrow.blocks)
    latents, actions = _inputs()
    out = narrow(latents, actions)
    assert out.shape == (2, 6, 8)
    out.sum().backward()  # the projections are trained with the blocks
    assert narrow.input_projection.weight.grad.abs().sum() > 0
    assert narrow.output_projection.weight.grad.abs().sum() > 0
    # Atari sizes: width 512 instead of 3136 shrinks the two-block decoder about 21x.
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        full = count(TransformerDecoder(dim=3136, num_actions=18))
        slim = count(TransformerDecoder(dim=3136, num_actions=18, width=512))
    assert 157e6 < full < 158e6 and 7e6 < slim < 8e6


def test_width_errors_name_the_parameter():
    with pytest.raises(ConfigError, match="width = 6 is not divisible by num_heads = 4"):
        TransformerDecoder(dim=8, num_actions=2, width=6, num_heads=4)
    with pytest.raises(ConfigError, match="width"):
        TransformerDecoder(dim=8, num_actions=2, width=0)
