"""Replay speed at the Atari setting: (4, 84, 84) frames, sequences of 16 + 10 steps, batch 32,
from a buffer holding 20k random steps (default capacity 100k). ``tox -e bench`` times them;
plain pytest runs each once."""

from __future__ import annotations

import pytest
import torch

from mlr_registry.replay.sequence_replay import PrioritizedSequenceReplay, UniformSequenceReplay

STEPS = 20_000
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _pool(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 4, 84, 84), generator=g, dtype=torch.uint8)


def _filled(cls):
    replay = cls(device=DEVICE)
    pool = _pool()
    for t in range(STEPS):
        replay.add(pool[t % len(pool)], t % 18, float(t % 3 - 1), t % 300 == 299)
    return replay


@pytest.fixture(scope="module")
def prioritized():
    return _filled(PrioritizedSequenceReplay)


@pytest.fixture(scope="module")
def uniform():
    return _filled(UniformSequenceReplay)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def test_bench_sample_32_prioritized(benchmark, prioritized):
    prioritized.set_step(50_000)

    def sample():
        batch = prioritized.sample(32)
        _sync()
        return batch

    batch = benchmark(sample)
    assert batch.obs.shape == (32, 26, 4, 84, 84)


def test_bench_sample_32_uniform(benchmark, uniform):
    def sample():
        batch = uniform.sample(32)
        _sync()
        return batch

    assert benchmark(sample).obs.shape == (32, 26, 4, 84, 84)


def test_bench_add(benchmark, prioritized):
    pool = _pool(8).numpy()  # the trainer passes the env's numpy observation
    state = {"t": 0}

    def add():
        t = state["t"] = state["t"] + 1
        prioritized.add(pool[t % 8], t % 18, 1.0, False)
        _sync()

    benchmark(add)
    assert prioritized.size >= STEPS


def test_bench_update_priorities_32(benchmark, prioritized):
    batch = prioritized.sample(32)
    values = torch.rand(32, device=DEVICE)

    def update():
        prioritized.update_priorities(batch.indices, values)
        _sync()

    benchmark(update)
    assert prioritized.priorities[batch.indices].gt(0).all()
