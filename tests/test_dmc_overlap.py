"""Overlapping the DMC env step with the update (``execution.overlap_env_step``) changes
nothing but wall time: every logged metric is identical, step for step."""

from __future__ import annotations

import pytest
from conftest import RecordingTracker, tiny_trainer, train_in_process

from mlr_registry import registry
from mlr_registry.dry_run import tiny_bindings

# The env thread's EGL context must be freed on that thread, not left to the garbage collector.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def test_overlapped_env_step_gives_identical_metrics():
    registry.load_all()
    files = ("gin/dmc_mlr.gin",)
    base = (*tiny_bindings(files, []), "trainers.dmc.eval_every = 80")
    runs = [train_in_process(*files, bindings=(*base, f"execution.overlap_env_step = {flag}"))
            for flag in (False, True)]
    reference, overlapped = ({k: v for k, v in run.history.items() if not k.startswith("throughput/")}
                             for run in runs)
    assert "train/mlr_loss" in reference and len(reference["eval/return_mean"]) == 3  # 0, 80, final 160
    assert overlapped == reference


def test_an_interrupted_overlapped_run_frees_rendering_on_the_env_thread():
    """A run that stops mid-loop (here an update fails) must still free the env's EGL context on
    the env thread; from any other thread dm_control refuses, with a traceback at exit."""
    import threading

    with tiny_trainer("gin/dmc_mlr.gin", bindings=("execution.overlap_env_step = True",)) as trainer:
        freed_on, release = [], trainer.env.release_rendering

        def recording_release():
            freed_on.append(threading.current_thread().name)
            release()

        def failing_update(*args, **kwargs):
            raise RuntimeError("an update failed")

        trainer.env.release_rendering = recording_release
        trainer._update = failing_update
        with pytest.raises(RuntimeError, match="an update failed"):
            trainer.train(RecordingTracker())
    assert len(freed_on) == 1 and freed_on[0].startswith("env-step")
    assert trainer._env_executor is None


def test_interrupts_reach_the_main_thread_not_the_env_thread():
    """The env thread blocks SIGINT and SIGTERM (the kernel then delivers them to the main thread,
    which runs the handlers) so that Ctrl-C never interrupts a render inside the GL driver."""
    import signal
    import threading

    with tiny_trainer("gin/dmc_mlr.gin", bindings=("execution.overlap_env_step = True",)) as trainer:
        masks, step = {}, trainer.env.step

        def recording_step(action):
            masks[threading.current_thread().name] = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            return step(action)

        trainer.env.step = recording_step
        trainer.train(RecordingTracker())
    (name, blocked), = masks.items()
    assert name.startswith("env-step") and {signal.SIGINT, signal.SIGTERM} <= blocked
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # this thread's are untouched
