"""The Atari loop's two faster orderings of one env step and its updates, beside the reference's
(env step, ``replay.add``, updates) that the trainer itself runs. Both give the reference's
results, metric for metric (``tests/test_atari_overlap.py``), and both need a replay that stores
a step's observation and action before its reward and done (``add_pending`` /
``complete_pending``): no batch reads a step's reward or done until ``T + 1`` steps later (see
``SequenceReplay.add_pending``).

Each takes the pieces of the step as arguments: ``env_step(action) -> (obs, reward, done, info)``
(reset after a done), ``update() -> metrics`` (sample, update, priorities) and the replay; each
returns ``(update metrics, (next obs, reward, done, info))``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from mlr_registry.execution.env_thread import beside
from mlr_registry.execution.transfer import HostCopy

Outcome = tuple[Any, float, bool, dict[str, Any]]


def overlapped_step(executor: ThreadPoolExecutor, replay: Any, step: int, obs: torch.Tensor, action: int,
                    env_step: Callable[[int], Outcome], update: Callable[[], Any],
                    updates: int) -> tuple[list, Outcome]:
    """``execution.overlap_env_step``: the env steps on ``executor``'s thread while the updates
    run. The results are the same: the updates only need the step's observation and action,
    which ``add_pending`` stores before them, the env draws only from its own RNG, and the
    step's reward and done reach the replay (``complete_pending``) before the next step."""
    replay.add_pending(obs, action)
    metrics, outcome = beside(executor, lambda: env_step(action), lambda: [update() for _ in range(updates)])
    replay.complete_pending(outcome[1], outcome[2])
    replay.set_step(step)
    return metrics, outcome


def pipelined_step(replay: Any, step: int, obs: torch.Tensor, action: torch.Tensor,
                   env_step: Callable[[int], Outcome], update: Callable[[], Any], updates: int) -> tuple[list, Outcome]:
    """``execution.pipeline_updates``: step t's updates are queued before the host reads a_t.

    The reference reads a_t back (the host waits for the GPU to finish acting), steps the env,
    then queues the updates; the GPU idles while the host prepares them. Here a_t (still on the
    device) is copied to the host in stream order (:class:`HostCopy`), stored in the replay on
    the device, and the updates are queued behind it; the host then waits for the acting kernels
    alone, steps the env while the GPU runs the updates, and at step t+1 queues acting behind
    them. The results are the same: acting at t+1 still runs on the weights after step t's
    updates (stream order), the updates read only what ``add_pending`` stores before them (as
    :func:`overlapped_step`), and the random draws come in the reference's order."""
    action_host = HostCopy(action)
    replay.add_pending(obs, action)
    metrics = [update() for _ in range(updates)]
    replay.set_step(step)  # after the updates, as in the other orders
    outcome = env_step(int(action_host.result()))
    replay.complete_pending(outcome[1], outcome[2])
    return metrics, outcome
