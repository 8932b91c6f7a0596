"""TransitionReplay: exact stack rebuilding, reference sequence sampling, wrap-around, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlr_registry.errors import CheckpointError, ConfigError
from mlr_registry.replay.transition_replay import TransitionReplay

SHAPE = (9, 6, 5)  # 3 RGB frames of 6x5: small, and h != w to catch transposes
A = 2


def fill(replay: TransitionReplay, lengths: list[int], seed: int = 0, open_last: bool = False) -> list[dict]:
    """Add episodes of the given lengths with FrameStack(3) semantics; reward = transition id;
    ``open_last``: the last episode has not ended yet.

    Returns one record per added transition (obs, next_obs, action, episode_end).
    """
    rng = np.random.default_rng(seed)
    records: list[dict] = []
    for e, length in enumerate(lengths):
        first = rng.integers(0, 256, (3, *SHAPE[1:]), dtype=np.uint8)
        obs = np.concatenate([first] * 3)  # the reset stack repeats the first frame
        for t in range(length):
            frame = rng.integers(0, 256, (3, *SHAPE[1:]), dtype=np.uint8)
            next_obs = np.concatenate([obs[3:], frame])
            action = rng.uniform(-1, 1, A).astype(np.float32)
            end = t == length - 1 and not (open_last and e == len(lengths) - 1)
            replay.add(obs, action, float(len(records)), next_obs, done=False, episode_end=end)
            records.append({"obs": obs, "next_obs": next_obs, "action": action, "end": end})
            obs = next_obs
    return records


def ids_of(reward: torch.Tensor) -> np.ndarray:
    return reward.numpy().astype(np.int64)


def test_stacks_rebuild_exactly_across_episode_boundaries() -> None:
    replay = TransitionReplay(SHAPE, A, capacity=200, sequence_length=4)
    records = fill(replay, [1, 2, 5, 9, 3])  # includes 1- and 2-step episodes (reset stack inside)
    assert replay.size == len(records) == 20
    every = torch.arange(replay.size)
    batch = replay.transitions(every)
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (20, *SHAPE)
    for i, rec in enumerate(records):
        assert np.array_equal(batch.obs[i].numpy(), rec["obs"])
        assert np.array_equal(batch.next_obs[i].numpy(), rec["next_obs"])
        assert np.allclose(batch.action[i].numpy(), rec["action"])
    assert ids_of(batch.reward).tolist() == list(range(20))
    assert torch.all(batch.not_done == 1.0)
    # the first obs of each episode is three copies of its first frame
    assert torch.equal(batch.obs[1, :3], batch.obs[1, 6:])


def test_sample_transitions_shapes_and_uniform_range() -> None:
    replay = TransitionReplay(SHAPE, A, capacity=100, sequence_length=4, seed=1)
    records = fill(replay, [30, 30])
    batch = replay.sample_transitions(512)
    assert batch.obs.shape == batch.next_obs.shape == (512, *SHAPE)
    assert batch.action.shape == (512, A) and batch.action.dtype == torch.float32
    assert batch.reward.shape == batch.not_done.shape == (512,)
    ids = ids_of(batch.reward)
    assert ids.min() >= 0 and ids.max() <= 59 and len(np.unique(ids)) > 50  # covers [0, size)
    for row, i in enumerate(ids[:32]):
        assert np.array_equal(batch.obs[row].numpy(), records[i]["obs"])
        assert np.array_equal(batch.next_obs[row].numpy(), records[i]["next_obs"])


def test_not_done_stores_true_terminals_only() -> None:
    replay = TransitionReplay(SHAPE, A, capacity=50, sequence_length=4)
    obs = np.zeros(SHAPE, np.uint8)
    replay.add(obs, np.zeros(A), 1.0, obs, done=False, episode_end=True)  # time limit
    replay.add(obs, np.zeros(A), 1.0, obs, done=True, episode_end=True)  # a true terminal
    assert replay.transitions(torch.arange(2)).not_done.tolist() == [1.0, 0.0]


def test_sequences_are_consecutive_and_never_hold_an_episode_end() -> None:
    replay = TransitionReplay(SHAPE, A, capacity=500, sequence_length=16, seed=3)
    records = fill(replay, [40, 17, 60, 16, 50])
    batch = replay.sample_sequences(64)
    assert batch.obs.shape == (64, 16, *SHAPE) and batch.obs.dtype == torch.uint8
    assert batch.action.shape == (64, 16, A) and batch.reward.shape == (64, 16)
    assert batch.done.dtype == torch.bool and not batch.done.any()
    ids = ids_of(batch.reward)
    assert np.all(np.diff(ids, axis=1) == 1)
    assert np.array_equal(ids[:, 0], batch.indices.numpy())
    ends = {i for i, r in enumerate(records) if r["end"]}
    assert not ends & set(ids.ravel().tolist())
    assert ids.max() <= replay.size - 2  # reference range [0, size - T): the newest step is never used
    for b in range(0, 64, 7):
        for t in range(16):
            assert np.array_equal(batch.obs[b, t].numpy(), records[ids[b, t]]["obs"])
            assert np.allclose(batch.action[b, t].numpy(), records[ids[b, t]]["action"])


def test_sequences_return_up_to_batch_size_without_resampling() -> None:
    replay = TransitionReplay(SHAPE, A, capacity=500, sequence_length=16, seed=0)
    fill(replay, [10] * 30)  # every window of 16 crosses an episode end
    assert replay.sample_sequences(128).batch_size == 0
    replay = TransitionReplay(SHAPE, A, capacity=500, sequence_length=16, seed=0)
    fill(replay, [20] * 20)  # 4 valid starts out of every 20: about 1/5 of the 2b draws valid
    sizes = [replay.sample_sequences(128).batch_size for _ in range(10)]
    assert all(0 < s < 128 for s in sizes) and 30 < np.mean(sizes) < 75
    replay = TransitionReplay(SHAPE, A, capacity=500, sequence_length=16, seed=0)
    fill(replay, [400])
    assert replay.sample_sequences(128).batch_size == 128  # the first b of 2b valid draws


def twins(lengths: list[int], **kwargs) -> tuple[TransitionReplay, TransitionReplay]:
    """The reference draw and the fixed-size one, same seed and contents."""
    params = {"capacity": 1000, "sequence_length": 16, "seed": 3, **kwargs}
    pair = (TransitionReplay(SHAPE, A, **params), TransitionReplay(SHAPE, A, fixed_size_sequences=True, **params))
    for replay in pair:
        fill(replay, lengths)
    return pair


def test_fixed_size_sequences_are_the_reference_batch_when_enough_windows_are_valid() -> None:
    ref, fixed = twins([250] * 5)  # wrapped; 15 of every 250 starts invalid: ~4 of the 64 draws
    assert fixed._sync_free_draw_is_safe(32)  # the host's bound allows the sync-free draw here
    for _ in range(20):
        a, b = ref.sample_sequences(32), fixed.sample_sequences(32)
        assert a.batch_size == b.batch_size == 32
        for key in ("obs", "action", "reward", "done", "indices"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert fixed.short_sequence_batches == 0


@pytest.mark.parametrize("lengths, sequence_length, batch_size, safe", [
    ([125] * 8, 16, 128, True),  # cartpole at the paper's settings, at the first aux step (1,000 steps)
    ([125] * 8, 64, 128, False),  # a sequence-length ablation: about half the windows cross an end
    ([250] * 4, 16, 4, False),  # a tiny batch: 8 draws bound nothing
])
def test_the_sync_free_draw_is_used_only_where_a_short_batch_is_out_of_reach(lengths, sequence_length,
                                                                             batch_size, safe) -> None:
    replay = TransitionReplay(SHAPE, A, capacity=1000, sequence_length=sequence_length, fixed_size_sequences=True)
    fill(replay, lengths)
    assert replay._sync_free_draw_is_safe(batch_size) == safe
    if not safe:
        open_only = TransitionReplay(SHAPE, A, capacity=1000, sequence_length=sequence_length,
                                     fixed_size_sequences=True)
        fill(open_only, [sum(lengths)], open_last=True)  # no episode has ended: every window is valid
        assert open_only._sync_free_draw_is_safe(batch_size)


def test_fixed_size_sequences_draw_the_reference_way_where_short_batches_are_likely() -> None:
    ref, fixed = twins([20] * 20)  # about 1/5 of the draws valid: always short of 128
    for _ in range(3):
        a, b = ref.sample_sequences(128), fixed.sample_sequences(128)
        assert 0 < b.batch_size < 128 and torch.equal(a.reward, b.reward) and torch.equal(a.obs, b.obs)
    assert fixed.short_sequence_batches == 0


def test_a_short_sync_free_batch_repeats_its_valid_windows_and_is_counted(monkeypatch) -> None:
    ref, fixed = twins([20] * 20)
    monkeypatch.setattr(fixed, "_sync_free_draw_is_safe", lambda batch_size: True)  # as if the bound had failed
    for calls in range(1, 4):
        a, b = ref.sample_sequences(128), fixed.sample_sequences(128)
        n = a.batch_size
        assert 0 < n < 128 and b.batch_size == 128
        assert torch.equal(b.reward[:n], a.reward) and torch.equal(b.obs[:n], a.obs)
        rows = torch.arange(128) % n  # the valid windows again, in order
        assert torch.equal(b.reward, a.reward[rows]) and not b.done.any()
        assert fixed.short_sequence_batches == calls
    state = fixed.state_dict()
    restored = TransitionReplay(SHAPE, A, capacity=1000, sequence_length=16, fixed_size_sequences=True)
    restored.load_state_dict(state)
    assert restored.short_sequence_batches == 3


def test_a_checkpoint_from_before_the_switch_recovers_the_episode_lengths_from_its_ends() -> None:
    lengths = [30, 12, 50, 40, 7, 9]
    replay = TransitionReplay(SHAPE, A, capacity=100, sequence_length=8, fixed_size_sequences=True)
    fill(replay, lengths, open_last=True)  # wrapped; the last 9 steps still an open episode
    assert replay._shortest_episode == 7 and replay._episode_start == 139  # tracked over the whole run
    state = replay.state_dict()
    for key in ("short_sequence_batches", "episode_start", "shortest_episode"):
        del state[key]
    old = TransitionReplay(SHAPE, A, capacity=100, sequence_length=8, fixed_size_sequences=True)
    old.load_state_dict(state)
    # from the stored ends alone: the gaps between them (the oldest, cut episode looks shorter)
    oldest = replay._count - replay._size
    ends = [e for e in np.cumsum(lengths[:-1]) - 1 if e >= oldest]
    assert old._episode_start == 139 and old._shortest_episode == int(np.diff([oldest - 1, *ends]).min())
    assert old.short_sequence_batches == 0 and old._shortest_episode <= 7



def test_sequences_need_more_than_sequence_length_steps() -> None:
    replay = TransitionReplay(SHAPE, A, capacity=50, sequence_length=16)
    fill(replay, [16])
    assert replay.num_sequence_starts == 0
    with pytest.raises(ValueError, match="sequence_length"):
        replay.sample_sequences(4)
    fill(replay, [1])
    assert replay.num_sequence_starts == 1


def test_circular_wrap_keeps_the_newest_and_never_straddles_the_write_pointer() -> None:
    capacity, T = 60, 8
    replay = TransitionReplay(SHAPE, A, capacity=capacity, sequence_length=T, seed=5)
    records = fill(replay, [50, 50, 37])  # 137 transitions: wrapped twice, long-enough episodes
    count = len(records)
    assert replay.size == capacity
    batch = replay.sample_transitions(1000)
    ids = ids_of(batch.reward)
    assert ids.min() >= count - capacity and ids.max() == count - 1
    assert torch.equal(batch.indices, torch.as_tensor(ids % capacity))
    for row in range(0, 1000, 50):
        assert np.array_equal(batch.obs[row].numpy(), records[ids[row]]["obs"])
        assert np.array_equal(batch.next_obs[row].numpy(), records[ids[row]]["next_obs"])
    for _ in range(20):
        seq = replay.sample_sequences(32)
        sids = ids_of(seq.reward)
        assert np.all(np.diff(sids, axis=1) == 1)  # consecutive: no jump across the write pointer
        assert sids.min() >= count - capacity and sids.max() <= count - 2
        b = int(np.argmin(sids[:, 0]))
        assert np.array_equal(seq.obs[b, -1].numpy(), records[sids[b, -1]]["obs"])


def test_short_episodes_drop_the_oldest_before_their_frames_are_overwritten() -> None:
    replay = TransitionReplay(SHAPE, A, capacity=40, sequence_length=4, seed=2)
    records = fill(replay, [2] * 50)  # reset stacks use 3 extra frames per 2 transitions
    assert 0 < replay.size < 40
    batch = replay.transitions(torch.arange(40)[:0])
    assert batch.obs.shape == (0, *SHAPE)
    batch = replay.sample_transitions(400)
    ids = ids_of(batch.reward)
    assert ids.min() >= len(records) - replay.size
    for row in range(0, 400, 10):
        assert np.array_equal(batch.obs[row].numpy(), records[ids[row]]["obs"])
        assert np.array_equal(batch.next_obs[row].numpy(), records[ids[row]]["next_obs"])


def test_state_dict_round_trip_continues_identically() -> None:
    a = TransitionReplay(SHAPE, A, capacity=60, sequence_length=8, seed=4)
    fill(a, [50, 40])
    state = a.state_dict()
    assert all(isinstance(v, (int, torch.Tensor)) for v in state.values())
    b = TransitionReplay(SHAPE, A, capacity=60, sequence_length=8, seed=99)
    b.load_state_dict(state)
    for x, y in ((a.sample_transitions(64), b.sample_transitions(64)),
                 (a.sample_sequences(16), b.sample_sequences(16))):
        assert torch.equal(x.obs, y.obs) and torch.equal(x.reward, y.reward)
    last = a.transitions(torch.tensor([(a._count - 1) % 60])).next_obs[0].numpy()
    frame = np.full((3, *SHAPE[1:]), 7, np.uint8)
    for r in (a, b):  # the episode in progress continues after loading
        r.add(last, np.zeros(A), 1000.0, np.concatenate([last[3:], frame]), False, True)
    assert torch.equal(a.sample_transitions(32).obs, b.sample_transitions(32).obs)
    with pytest.raises(CheckpointError, match="capacity"):
        TransitionReplay(SHAPE, A, capacity=61, sequence_length=8).load_state_dict(state)


def test_add_checks_shapes_and_episode_continuity() -> None:
    replay = TransitionReplay(SHAPE, A, capacity=50, sequence_length=4)
    obs = np.zeros(SHAPE, np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        replay.add(obs.astype(np.float32), np.zeros(A), 0.0, obs, False, False)
    with pytest.raises(ValueError, match="action_dim"):
        replay.add(obs, np.zeros(A + 1), 0.0, obs, False, False)
    with pytest.raises(ValueError, match="shifted by one frame"):
        replay.add(obs, np.zeros(A), 0.0, obs + 1, False, False)
    nxt = np.concatenate([obs[3:], np.ones((3, *SHAPE[1:]), np.uint8)])
    replay.add(obs, np.zeros(A), 0.0, nxt, False, False)
    with pytest.raises(ValueError, match="episode_end"):
        replay.add(obs, np.zeros(A), 0.0, nxt, False, False)  # obs != previous next_obs
    nxt2 = torch.from_numpy(np.concatenate([nxt[3:], np.full((3, *SHAPE[1:]), 2, np.uint8)]))
    replay.add(torch.from_numpy(nxt), torch.ones(A), 0.5, nxt2, False, True)  # torch inputs too
    batch = replay.transitions(torch.tensor([1]))
    assert torch.equal(batch.next_obs[0], nxt2) and batch.action.tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize("kwargs, match", [
    ({"capacity": 16}, "capacity"), ({"sequence_length": 0}, "sequence_length"),
    ({"action_dim": 0}, "action_dim"), ({"observation_shape": (8, 6, 5)}, "frame_stack"),
    ({"observation_shape": (9, 6)}, "observation_shape"), ({"device": "nope"}, "device"),
    ({"capacity": 2.5}, "capacity"), ({"fixed_size_sequences": "yes"}, "fixed_size_sequences"),
])
def test_bad_parameters_are_config_errors(kwargs: dict, match: str) -> None:
    params = {"observation_shape": SHAPE, "action_dim": A, "capacity": 100, "sequence_length": 16, **kwargs}
    with pytest.raises(ConfigError, match=match):
        TransitionReplay(**params)
