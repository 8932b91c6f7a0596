"""Sequence replay (docs/faithfulness.md#atari-replay-and-n-step-returns) and its sum tree."""

from __future__ import annotations

import io
import subprocess
import sys

import gin
import pytest
import torch

from mlr_registry.errors import CheckpointError, ConfigError
from mlr_registry.replay.sequence_replay import PrioritizedSequenceReplay, UniformSequenceReplay
from mlr_registry.replay.sum_tree import SumTree

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SMALL = (4, 5, 5)  # (frame_stack h w): tiny frames, same logic as 4x84x84


def rollout(steps: int, dones: set[int], shape=SMALL, seed: int = 0, first_full: bool = False):
    """A fake env: at a done (episode end or life loss) the stack is zeroed and the next frame
    pushed, as the Atari env does. Frames are random in 1..255 so a blank (0) frame is visible.

    Returns obs (steps c h w) uint8, actions, rewards, dones lists, aligned as add() takes them.
    """
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape

    def frame():
        return torch.randint(1, 256, (h, w), generator=g, dtype=torch.uint8)

    stack = torch.zeros(shape, dtype=torch.uint8)
    if first_full:  # the buffer starts mid-episode: older frames are real
        stack = torch.stack([frame() for _ in range(c)])
    stack[-1] = frame()
    obs, actions, rewards, done = [], [], [], []
    for t in range(steps):
        obs.append(stack.clone())
        actions.append(int(torch.randint(0, 6, (), generator=g)))
        rewards.append(float(torch.randint(-1, 2, (), generator=g)))
        done.append(t in dones)
        if t in dones:
            stack.zero_()
        stack = torch.cat([stack[1:], frame()[None]])
    return torch.stack(obs), actions, rewards, done


def fill(replay, obs, actions, rewards, dones):
    for o, a, r, d in zip(obs, actions, rewards, dones, strict=True):
        replay.add(o, a, r, d)
    return replay


def small(cls=PrioritizedSequenceReplay, **kw):
    args = dict(observation_shape=SMALL, capacity=60, sequence_length=16, n_step=10)
    args.update(kw)
    return cls(**args)


# ----------------------------------------------------------------------------------- sum tree

def test_sum_tree_totals_and_every_parent_is_the_sum_of_its_children():
    tree = SumTree(10)  # not a power of two: 16 leaves, 6 unused
    assert tree.depth == 4 and tree.num_leaves == 16
    tree.update(torch.tensor([0, 3, 9, 3]), torch.tensor([1.0, 2.0, 4.0, 2.0]))  # duplicate 3
    tree.update(torch.tensor([9, 5]), torch.tensor([0.5, 3.0]))
    expected = torch.zeros(10, dtype=torch.float64)
    expected[[0, 3, 5, 9]] = torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    assert torch.equal(tree.leaves, expected)
    assert tree.total.item() == pytest.approx(6.5)
    inner = torch.arange(tree.num_leaves - 1)
    assert torch.allclose(tree.tree[inner], tree.tree[2 * inner + 1] + tree.tree[2 * inner + 2])
    # duplicates with different values: the first copy wins (rlpyt's np.unique(return_index)),
    # and the tree stays consistent
    tree.update(torch.tensor([2, 2]), torch.tensor([7.0, 8.0]))
    assert tree.get(torch.tensor([2])).item() == 7.0
    assert tree.total.item() == pytest.approx(6.5 + 7.0)
    assert torch.allclose(tree.tree[inner], tree.tree[2 * inner + 1] + tree.tree[2 * inner + 2])


def test_sum_tree_keeps_the_first_copy_of_each_duplicated_leaf():
    tree = SumTree(8)
    idx = torch.tensor([5, 1, 5, 3, 1, 5, 0])
    tree.update(idx, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]))
    assert tree.leaves.tolist() == [7.0, 2.0, 0.0, 4.0, 0.0, 1.0, 0.0, 0.0]
    assert tree.total.item() == 14.0


def test_update_priorities_keeps_the_first_copy_of_a_start_drawn_twice():
    obs, actions, rewards, dones = rollout(50, set())
    replay = fill(small(), obs, actions, rewards, dones)
    replay.update_priorities(torch.tensor([7, 9, 7, 7]), torch.tensor([4.0, 9.0, 16.0, 25.0]))
    assert replay.priorities[[7, 9]].tolist() == [2.0, 3.0]  # KL^0.5 of the first copy


def test_sum_tree_set_leaves_rebuild_equals_incremental_updates():
    values = torch.rand(37, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a, b = SumTree(37), SumTree(37)
    a.update(torch.arange(37), values)
    b.set_leaves(values)
    assert torch.allclose(a.tree, b.tree)


def test_sum_tree_find_prefix_sums_and_skips_zero_leaves():
    tree = SumTree(5)
    tree.update(torch.arange(5), torch.tensor([1.0, 2.0, 0.0, 3.0, 0.0]))  # cumulative 1, 3, 3, 6
    mass = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.99, 3.0, 3.01, 5.999])
    assert tree.find(mass).tolist() == [0, 0, 0, 1, 1, 1, 3, 3]
    tree.update(torch.tensor([0]), torch.tensor([0.0]))  # mass 0 must not land on a zero leaf
    assert tree.find(torch.tensor([0.0])).tolist() == [1]


@pytest.mark.parametrize("stratified", [False, True])
def test_sum_tree_sampling_proportions(stratified):
    priorities = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 10.0])
    tree = SumTree(7)
    tree.update(torch.arange(7), priorities)
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([tree.sample(1000, g, stratified)[0] for _ in range(200)])  # 200k draws
    counts = torch.bincount(draws, minlength=7).double()
    assert counts[0] == 0 and counts[5] == 0
    expected = priorities.double() / priorities.sum() * draws.numel()
    nz = expected > 0
    chi2 = ((counts[nz] - expected[nz]) ** 2 / expected[nz]).sum().item()
    assert chi2 < 18.5  # chi-square, 4 degrees of freedom, p = 0.999
    idx, prio = tree.sample(16, g, stratified)
    assert torch.equal(prio, priorities.double()[idx])


# ----------------------------------------------------------------------------------- storage

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("first_full", [False, True])
def test_rebuilt_stacks_equal_added_observations_across_episode_and_life_boundaries(device, first_full):
    # dones: episode ends and life losses (the buffer sees both as done), incl. back-to-back
    # dones and a done right at the start; capacity 20 with 57 steps wraps the buffer twice.
    dones = {0, 5, 6, 9, 17, 18, 19, 31, 40, 41, 55}
    obs, actions, rewards, done = rollout(57, dones, first_full=first_full)
    replay = fill(small(capacity=20, sequence_length=4, n_step=3, device=device), obs, actions, rewards, done)
    seq = 7  # sequence_length + n_step
    lo, hi = 57 - 20 + 3, 57 - (1 + 3 + 4) - 1  # valid logical starts after the wrap
    starts = torch.arange(lo, hi + 1)
    batch = replay.gather(starts % 20, sanitize=False)
    want = torch.stack([obs[s:s + seq] for s in starts.tolist()])
    assert torch.equal(batch.obs.cpu(), want)
    assert torch.equal(batch.action.cpu(), torch.tensor([actions[s:s + seq] for s in starts.tolist()]))
    # before any wrap, every start from 0 on (the first obs's older frames come from the prefix)
    replay = fill(small(capacity=80, sequence_length=4, n_step=3, device=device), obs, actions, rewards, done)
    starts = torch.arange(0, 57 - seq + 1)
    batch = replay.gather(starts, sanitize=False)
    assert torch.equal(batch.obs.cpu(), torch.stack([obs[s:s + seq] for s in starts.tolist()]))
    assert replay.size == 57


def test_add_rejects_a_wrong_observation():
    replay = small()
    with pytest.raises(ValueError, match="uint8"):
        replay.add(torch.zeros(4, 5, 6, dtype=torch.uint8), 0, 0.0, False)
    with pytest.raises(ValueError, match="uint8"):
        replay.add(torch.zeros(SMALL), 0, 0.0, False)


# ----------------------------------------------------------------------------------- n-step

def _ramp_replay(done_at: set[int], steps: int = 12, **kw):
    """Rewards r_t = t + 1, discount 0.5, n_step 3, sequence_length 5 (T = 8)."""
    obs, actions, _, dones = rollout(steps, done_at)
    replay = small(capacity=40, sequence_length=5, n_step=3, discount=0.5, **kw)
    return fill(replay, obs, actions, [float(t + 1) for t in range(steps)], dones), obs, actions


@pytest.mark.parametrize("one_step_done_n", [True, False])
def test_n_step_returns_and_done_n_vs_hand_computation_across_a_done(one_step_done_n):
    replay, _, _ = _ramp_replay({3}, one_step_done_n=one_step_done_n)
    batch = replay.gather(torch.tensor([0]), sanitize=False)
    # return_t = sum_{k<3} 0.5^k r_{t+k}, cut after the done at t=3 (its reward counts), both modes
    assert batch.returns[0].tolist() == pytest.approx([1 + 1 + 0.75, 2 + 1.5 + 1, 3 + 2, 4, 5 + 3 + 1.75])
    if one_step_done_n:  # faithful: the pinned rlpyt stores the 1-step done as done_n
        assert batch.done_n[0].tolist() == [False, False, False, True, False]
    else:  # clean: any done in t .. t+n-1
        assert batch.done_n[0].tolist() == [False, True, True, True, False]
    assert batch.reward[0].tolist() == [float(t + 1) for t in range(8)]
    assert batch.done[0].tolist() == [False, False, False, True, False, False, False, False]


# ----------------------------------------------------------------------------------- sanitize

def test_one_step_done_n_is_the_default_and_gin_switch():
    assert small().one_step_done_n and small(UniformSequenceReplay).one_step_done_n
    with gin.unlock_config():
        gin.parse_config("replays.prioritized_sequence.one_step_done_n = False")
    try:
        assert not small().one_step_done_n
    finally:
        gin.clear_config()


def test_faithful_done_n_bootstraps_from_the_last_obs_before_the_first_done():
    # The pinned rlpyt's RL target: a start whose first done is k = 1..n-1 steps ahead keeps
    # done_n[0] = False, its return is cut at the done, and sanitizing made obs[n] (the
    # bootstrap observation) the obs of step k: gamma^n * Z(s_{t+k}) is added.
    replay, obs, _ = _ramp_replay({3, 9})
    batch = replay.gather(torch.tensor([1, 2, 3, 4]))  # first done at k = 2, 1, 0, 5 (none in 0..2)
    assert batch.done_n[:, 0].tolist() == [False, False, True, False]
    assert batch.returns[:, 0].tolist() == pytest.approx([2 + 1.5 + 1, 3 + 2, 4, 5 + 3 + 1.75])
    for i, k in ((0, 2), (1, 1)):
        assert torch.equal(batch.obs[i, 3], obs[1 + i + k])  # obs[n_step = 3] = s_{t+k}
    clean = _ramp_replay({3, 9}, one_step_done_n=False)[0].gather(torch.tensor([1, 2, 3, 4]))
    assert clean.done_n[:, 0].tolist() == [True, True, True, False]
    assert torch.equal(clean.obs, batch.obs) and torch.equal(clean.returns, batch.returns)


@pytest.mark.parametrize("one_step_done_n", [True, False])
def test_sanitize_repeats_the_done_obs_zeroes_rewards_and_keeps_actions(one_step_done_n):
    replay, obs, actions = _ramp_replay({3, 9}, one_step_done_n=one_step_done_n)
    raw = replay.gather(torch.tensor([1, 4, 6]), sanitize=False)
    batch = replay.gather(torch.tensor([1, 4, 6]))
    # sample 0 (start 1): first done at index 2 -> steps 3..7 repeat obs 2
    assert torch.equal(batch.obs[0, :3], obs[1:4])
    assert all(torch.equal(batch.obs[0, k], obs[3]) for k in range(3, 8))
    assert batch.reward[0].tolist() == [2.0, 3.0, 4.0, 0, 0, 0, 0, 0]
    assert batch.returns[0].tolist() == pytest.approx([2 + 1.5 + 1, 3 + 2, 4, 0, 0])
    # done_n is True after the first done in both modes (MLR's sanitize_batch); before it, the
    # faithful flag is the 1-step done, the clean one any done in the n steps
    expected = [False, False, True, True, True] if one_step_done_n else [True, True, True, True, True]
    assert batch.done_n[0].tolist() == expected
    # actions and dones are not sanitized
    assert torch.equal(batch.action, raw.action)
    assert batch.action[0].tolist() == actions[1:9]
    assert torch.equal(batch.done, raw.done)
    # sample 1 (start 4): the done at step 9 is index 5, outside done[:, :5]: untouched
    # sample 2 (start 6): done at index 3 -> steps 4.. repeat obs at 9
    for name in ("obs", "reward", "returns", "done_n"):
        assert torch.equal(getattr(batch, name)[1], getattr(raw, name)[1])
    assert all(torch.equal(batch.obs[2, k], obs[9]) for k in range(4, 8))
    assert batch.reward[2, 4:].eq(0).all() and batch.reward[2, :4].tolist() == [7.0, 8.0, 9.0, 10.0]
    assert batch.done_n[2, 4:].all() and batch.returns[2, 4].item() == 0


# ----------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", [PrioritizedSequenceReplay, UniformSequenceReplay])
def test_invalid_starts_are_never_sampled(cls, device):
    obs, actions, rewards, dones = rollout(130, {50, 90})
    replay = small(cls, device=device)  # capacity 60, off_backward 27, off_forward 3
    fill(replay, obs[:45], actions[:45], rewards[:45], dones[:45])
    idx = torch.cat([replay.sample(256).indices for _ in range(8)]).cpu()
    assert set(idx.tolist()) == set(range(3, 45 - 27))  # starts 3..17: all, and only, valid ones
    fill(replay, obs[45:], actions[45:], rewards[45:], dones[45:])  # 130 steps: wrapped twice
    idx = torch.cat([replay.sample(256).indices for _ in range(8)]).cpu()
    valid = {s % 60 for s in range(130 - 60 + 3, 130 - 27)}  # not the 3 oldest, not the last 27
    assert set(idx.tolist()) == valid
    assert replay.num_valid_starts == len(valid) == 30


@pytest.mark.parametrize("cls", [PrioritizedSequenceReplay, UniformSequenceReplay])
def test_a_pending_step_changes_no_batch_before_its_reward_and_done_arrive(cls):
    """What lets the Atari trainer step the env while it updates (``overlap_env_step``): after
    ``add_pending(obs, action)`` every batch equals the one after the whole ``add``, though the
    step's reward and done (here a done every 7 steps and rewards of ±1) are not written yet."""
    dones = {s for s in range(140) if s % 7 == 6}
    obs, actions, rewards, done = rollout(140, dones)
    done = [d or (r != 0 and s % 3 == 0) for s, (r, d) in enumerate(zip(rewards, done, strict=True))]
    whole, split = small(cls, seed=3), small(cls, seed=3)
    newest = set()
    for t in range(140):  # wraps the 60-slot buffer twice
        whole.add(obs[t], actions[t], rewards[t], done[t])
        split.add_pending(obs[t], actions[t])
        if whole.can_sample(1):
            a, b = whole.sample(64), split.sample(64)
            for field in ("obs", "action", "reward", "done", "returns", "done_n", "weights", "indices"):
                assert torch.equal(getattr(a, field), getattr(b, field)), (t, field)
            newest.update(((t - 27 - a.indices) % 60 == 0).tolist())  # a window ending at t - 2
            whole.update_priorities(a.indices, a.returns[:, 0].abs() + 0.5)
            split.update_priorities(b.indices, b.returns[:, 0].abs() + 0.5)
        split.complete_pending(rewards[t], done[t])
    assert True in newest  # the windows nearest the pending step were drawn, not just old ones
    assert all(torch.equal(x, y) for x, y in zip(whole.state_dict().values(), split.state_dict().values(),
                                                  strict=True) if isinstance(x, torch.Tensor))


def test_pending_steps_are_completed_in_order():
    obs, actions, rewards, dones = rollout(2, set())
    replay = small()
    with pytest.raises(RuntimeError, match="add_pending first"):
        replay.complete_pending(1.0, False)
    replay.add_pending(obs[0], actions[0])
    with pytest.raises(RuntimeError, match="still waits for complete_pending"):
        replay.add_pending(obs[1], actions[1])
    with pytest.raises(RuntimeError, match="save between env steps"):
        replay.state_dict()
    replay.complete_pending(rewards[0], dones[0])
    assert replay.state_dict()["count"] == 1


def test_can_sample_needs_one_full_window():
    obs, actions, rewards, dones = rollout(31, set())
    replay = small()
    fill(replay, obs[:30], actions[:30], rewards[:30], dones[:30])
    assert not replay.can_sample(1)
    with pytest.raises(RuntimeError, match="31"):
        replay.sample(4)
    replay.add(obs[30], actions[30], rewards[30], dones[30])
    assert replay.can_sample(32)
    assert replay.sample(32).indices.tolist() == [3] * 32


def test_new_entries_get_priority_one_and_windows_near_the_cursor_zero():
    obs, actions, rewards, dones = rollout(50, set())
    replay = fill(small(), obs, actions, rewards, dones)
    p = replay.priorities
    assert p[3:50 - 27].eq(1.0).all()
    assert p[:3].eq(0).all() and p[50 - 27:].eq(0).all()
    replay.update_priorities(torch.tensor([5]), torch.tensor([4.0]))
    replay.add(obs[0], 0, 0.0, False)  # a new add does not reset priorities already set
    assert replay.priorities[5].item() == pytest.approx(2.0) and replay.priorities[50 - 27].item() == 1.0


def test_update_priorities_clamps_and_raises_to_alpha_and_leaves_invalid_entries_off():
    obs, actions, rewards, dones = rollout(50, set())
    replay = fill(small(), obs, actions, rewards, dones)
    replay.update_priorities(torch.tensor([4, 5, 6, 40, 6]), torch.tensor([0.0, 1e9, 0.25, 3.0, 0.25]))
    p = replay.priorities
    assert p[4].item() == pytest.approx(1e-3)  # clamp 1e-6, ^0.5
    assert p[5].item() == pytest.approx(1e3)  # clamp 1e6, ^0.5
    assert p[6].item() == pytest.approx(0.5)
    assert p[40].item() == 0.0  # near the cursor: stays off
    assert replay._tree.total.item() == pytest.approx(p.sum().item())


def test_importance_weights_match_the_hand_formula():
    obs, actions, rewards, dones = rollout(60, set())
    replay = fill(small(), obs, actions, rewards, dones)
    kl = torch.linspace(0.01, 5.0, 30)
    replay.update_priorities(torch.arange(3, 33), kl)
    replay.set_step(51_000)
    assert replay.beta == pytest.approx(0.7)
    batch = replay.sample(32)
    p = kl.double().clamp(1e-6, 1e6).sqrt()[batch.indices - 3]  # stored leaf = KL^0.5
    w = (1.0 / (p + 1e-5)) ** 0.7
    assert batch.weights.dtype == torch.float32
    assert torch.allclose(batch.weights.double(), w / w.max(), rtol=1e-6)
    assert batch.weights.max().item() == 1.0


def test_beta_schedule():
    replay = small()
    assert replay.beta == 0.4
    for step, beta in [(0, 0.4), (2000, 0.4), (51_000, 0.7), (100_000, 1.0), (150_000, 1.0)]:
        replay.set_step(step)
        assert replay.beta == pytest.approx(beta), step


def test_uniform_variant_has_unit_weights_and_spreads_over_valid_starts():
    obs, actions, rewards, dones = rollout(60, {20})
    replay = fill(small(UniformSequenceReplay), obs, actions, rewards, dones)
    replay.set_step(50_000)
    replay.update_priorities(torch.tensor([3]), torch.tensor([100.0]))  # ignored
    batch = replay.sample(2000)
    assert batch.weights.eq(1.0).all() and batch.weights.dtype == torch.float32
    counts = torch.bincount(batch.indices, minlength=33)[3:33].double()
    assert counts.min() > 0 and ((counts - 2000 / 30) ** 2 / (2000 / 30)).sum() < 60  # chi2, 29 dof


def test_batch_shapes_and_dtypes_at_full_frame_size():
    shape = (4, 84, 84)
    obs, actions, rewards, dones = rollout(60, {30}, shape=shape)
    replay = fill(PrioritizedSequenceReplay(observation_shape=shape, capacity=100), obs, actions, rewards, dones)
    b = replay.sample(32)
    assert b.obs.shape == (32, 26, 4, 84, 84) and b.obs.dtype == torch.uint8
    assert b.action.shape == (32, 26) and b.action.dtype == torch.int64
    assert b.reward.shape == (32, 26) and b.reward.dtype == torch.float32
    assert b.done.shape == (32, 26) and b.done.dtype == torch.bool
    assert b.returns.shape == (32, 16) and b.returns.dtype == torch.float32
    assert b.done_n.shape == (32, 16) and b.done_n.dtype == torch.bool
    assert b.weights.shape == (32,) and b.weights.dtype == torch.float32
    assert b.indices.shape == (32,) and b.indices.dtype == torch.int64


def test_sampling_is_seeded():
    obs, actions, rewards, dones = rollout(60, set())
    a = fill(small(seed=3), obs, actions, rewards, dones)
    b = fill(small(seed=3), obs, actions, rewards, dones)
    c = fill(small(seed=4), obs, actions, rewards, dones)
    ia, ib, ic = (r.sample(64).indices for r in (a, b, c))
    assert torch.equal(ia, ib) and not torch.equal(ia, ic)


# ----------------------------------------------------------------------------------- config

def test_registered_and_gin_configurable():
    with gin.unlock_config():
        gin.parse_config("replays.prioritized_sequence.alpha = 0.25\nreplays.uniform_sequence.n_step = 3")
    try:
        assert small().alpha == 0.25  # explicit arguments win over gin, the rest is bound
        assert UniformSequenceReplay(observation_shape=SMALL, capacity=60).n_step == 3
    finally:
        gin.clear_config()


@pytest.mark.parametrize("kwargs, name", [
    (dict(capacity=30), "capacity"),  # needs > 27 + 3
    (dict(alpha=1.5), "alpha"),
    (dict(beta_start=-0.1), "beta_start"),
    (dict(beta_anneal_start=10, beta_anneal_end=5), "beta_anneal_end"),
    (dict(n_step=0), "n_step"),
    (dict(sequence_length=0), "sequence_length"),
    (dict(discount=1.5), "discount"),
    (dict(default_priority=0.0), "default_priority"),
    (dict(observation_shape=(84, 84)), "observation_shape"),
    (dict(device="gpu0"), "device"),
] + ([] if torch.cuda.is_available() else [(dict(device="cuda"), "CUDA")]))
def test_invalid_parameters_are_config_errors(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        small(**kwargs)


# ----------------------------------------------------------------------------------- checkpoint

@pytest.mark.parametrize("cls", [PrioritizedSequenceReplay, UniformSequenceReplay])
def test_state_dict_round_trip_with_weights_only_load(cls):
    obs, actions, rewards, dones = rollout(100, {40, 70})
    replay = fill(small(cls), obs, actions, rewards, dones)  # wrapped
    replay.set_step(30_000)
    replay.update_priorities(replay.sample(8).indices, torch.rand(8))
    state = replay.state_dict()
    assert all(isinstance(v, (torch.Tensor, int)) for v in state.values())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = small(cls)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored.size == 60 and restored.beta == replay.beta
    x, y = replay.sample(16), restored.sample(16)
    for name in ("obs", "action", "reward", "done", "returns", "done_n", "weights", "indices"):
        assert torch.equal(getattr(x, name), getattr(y, name)), name
    with pytest.raises(CheckpointError, match="capacity"):
        small(cls, capacity=70).load_state_dict(state)


# --- execution.replay_compile: compiled batch assembly and sum-tree descent / write-back -------

def _filled_pair(cls, monkeypatch, backend="aot_eager"):
    from mlr_registry.execution import Execution, compilation

    monkeypatch.setattr(compilation, "DEFAULT_COMPILE_BACKEND", backend)
    replays = [cls(capacity=600, seed=1), cls(capacity=600, seed=1)]
    replays[1].execution = Execution(replay_compile=True)  # kept for the assertions
    replays[1].execution.apply_replay(replays[1])
    g = torch.Generator().manual_seed(0)
    for i in range(700):  # wraps once; episodes end inside sampled windows
        obs = torch.randint(0, 255, (4, 84, 84), dtype=torch.uint8, generator=g)
        for r in replays:
            r.add(obs, i % 6, float(i % 3) - 1, i % 97 == 96)
    return replays


@pytest.mark.parametrize("cls", [PrioritizedSequenceReplay, UniformSequenceReplay])
def test_compiled_replay_gives_the_same_batches_and_priorities(cls, monkeypatch):
    eager, fast = _filled_pair(cls, monkeypatch)
    assert fast.execution.describe()["replay_compile"] == "aot_eager/default/update"
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        a, b = eager.sample(32), fast.sample(32)
        for field in ("obs", "action", "reward", "done", "returns", "done_n", "weights", "indices"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        values = torch.rand(32, generator=g) * 4
        eager.update_priorities(a.indices, values)
        fast.update_priorities(b.indices, values)
        eager.add(a.obs[0, 0], 1, 0.0, False)  # an insertion between samples: its leaves stay eager
        fast.add(a.obs[0, 0], 1, 0.0, False)
    if cls is PrioritizedSequenceReplay:
        assert torch.equal(eager.priorities, fast.priorities)


def test_a_replay_that_cannot_compile_samples_the_eager_batch(monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("simulated: no code generator")

    eager, fast = _filled_pair(PrioritizedSequenceReplay, monkeypatch, backend=broken)
    with pytest.warns(RuntimeWarning, match="execution.replay_compile turned off.*simulated"):
        b = fast.sample(32)
    assert torch.equal(b.indices, eager.sample(32).indices)  # the generator was rolled back first
    assert fast.execution.describe()["replay_compile"] == "off"


def test_replays_and_envs_import_nothing_of_the_agents():
    """DESIGN.md: envs and replay know nothing of agents (the execution layer compiles what a
    replay declares, from outside)."""
    code = ("import sys, mlr_registry.replay.sequence_replay, mlr_registry.replay.transition_replay, "
            "mlr_registry.envs.atari, mlr_registry.envs.catch; "
            "print(sorted(m for m in sys.modules if m.startswith('mlr_registry.agents')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
