"""Host↔device transfers that never wait for the GPU (``mlr_registry/execution/transfer.py``), and the
pipelined Atari loop built on them (``execution.pipeline_updates``).

On the CPU the helpers must give exactly ``torch.as_tensor``'s values; on CUDA (when present)
``torch.cuda.set_sync_debug_mode('error')`` turns any host wait into an error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import RecordingTracker, tiny_trainer

from mlr_registry.execution.transfer import HostCopy, to_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("data, dtype", [(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), None),
                                         ([3, 1, 2], torch.int64), ([0.5, -1.25], torch.float64), (7, None)])
def test_to_device_gives_as_tensors_values(data, dtype):
    out = to_device(data, "cpu", dtype)
    expected = torch.as_tensor(data, dtype=dtype)
    assert out.dtype == expected.dtype and out.device.type == "cpu"
    assert torch.equal(out, expected)


def test_to_device_returns_a_tensor_already_there_as_is():
    x = torch.arange(5)
    assert to_device(x, "cpu") is x
    assert to_device(x, "cpu", torch.float64).dtype == torch.float64


def test_host_copy_is_the_value_when_it_was_taken():
    x = torch.arange(4)
    copy = HostCopy(x)
    x += 10  # later work on the tensor does not reach the copy
    assert copy.result().tolist() == [0, 1, 2, 3]


@cuda
def test_gpu_transfers_queue_behind_the_work_without_waiting():
    big = torch.randn(2048, 2048, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(10):  # queued work the transfers must not wait for
            big = torch.tanh(big @ big)
        x = to_device(np.arange(10), "cuda", torch.int64)  # (10) 0..9, in stream order
        copy = HostCopy((x * 2).sum() + big[0, 0].ge(2).long())  # tanh < 2: + 0
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert int(copy.result()) == 90


# A short Catch run on CUDA: updates from step 40 to 80.
CATCH = ("trainers.atari100k.env = @envs.catch", "envs.catch.grid = 5", "envs.catch.image_size = 60",
         "encoders.nature_cnn.image_size = 60", "trainers.atari100k.num_env_steps = 80",
         "trainers.atari100k.learning_starts = 40", "trainers.atari100k.log_every = 40",
         "trainers.atari100k.device = 'cuda'", "execution.pipeline_updates = True")


@cuda
def test_gpu_pipelined_loop_never_waits_for_the_gpu():
    """Every learning step (act, replay writes, two sample + update + priority write-backs, the
    action's read-back, the env step) runs with host waits turned into errors; the first three
    (optimizer state, the pinned allocator's first blocks) are left out."""
    with tiny_trainer("gin/atari_mlr.gin", bindings=CATCH) as trainer:
        strict, step_fn = [], trainer._step

        def no_waits(step, obs):
            if step < trainer.learning_starts + 3:
                return step_fn(step, obs)
            torch.cuda.set_sync_debug_mode("error")
            try:
                out = step_fn(step, obs)
            finally:
                torch.cuda.set_sync_debug_mode(0)
            strict.append(step)
            return out

        trainer._step = no_waits
        tracker = RecordingTracker()
        trainer.train(tracker)
    assert len(strict) == 80 - 43
    assert all(math.isfinite(v) for v in tracker.history["train/mlr_loss"])


@cuda
def test_gpu_dmc_update_and_replay_write_never_wait_for_the_gpu():
    """DMC with the fast config's fixed-size MLR batch: each update (transition batch, MLR batch,
    the four SAC phases) and each replay write of a new transition runs with host waits turned
    into errors, after the first three updates (optimizer state, the pinned allocator's first
    blocks). The reference's MLR draw (``nonzero``) would fail it. The episode outlasts the run,
    so the replay's bound allows the sync-free draw throughout."""
    pytest.importorskip("dm_control")
    with tiny_trainer("gin/dmc_mlr.gin", bindings=(
            "trainers.dmc.device = 'cuda'", "replays.transition.fixed_size_sequences = True",
            "envs.dmc.episode_length = 1000")) as trainer:
        strict: list[str] = []

        def no_waits(fn, name):
            def run(*args, **kwargs):
                if trainer.update_count < 3:
                    return fn(*args, **kwargs)
                torch.cuda.set_sync_debug_mode("error")
                try:
                    return fn(*args, **kwargs)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
                    strict.append(name)
            return run

        trainer._update = no_waits(trainer._update, "update")
        trainer.replay.add = no_waits(trainer.replay.add, "add")
        tracker = RecordingTracker()
        trainer.train(tracker)
    assert strict.count("update") >= 10 and strict.count("add") >= 10
    assert trainer.replay._shortest_episode == 0 and trainer.replay._sync_free_draw_is_safe(trainer.aux_batch_size)
    assert all(math.isfinite(v) for v in tracker.history["train/mlr_loss"])
