"""Shared test helpers: CLI subprocesses, temporary plugin distributions, MLflow stores."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `tox` runs one pytest-xdist worker per core: one torch thread each. More threads than cores
    # oversubscribes them and makes every update 5-10x slower. Subprocesses (the CLI) inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

TOY_PLUGIN = '''
import signal
import time
from mlr_registry import register
from mlr_registry.errors import check_range

class InterruptedFinalizer:
    """Ctrl-C while Python runs a finalizer: the handler's KeyboardInterrupt is 'ignored' there."""
    def __del__(self):
        signal.raise_signal(signal.SIGINT)

@register("trainer", "toy")
class ToyTrainer:
    """A test-only trainer: logs a decreasing loss; can crash or run slowly."""
    def __init__(self, steps: int = 3, lr: float = 0.1, crash: bool = False, sleep_s: float = 0.0,
                 interrupt_in_finalizer: int = -1):
        check_range("toy.lr", lr, 0, 1, low_open=True)
        self.steps, self.crash, self.sleep_s = steps, crash, sleep_s
        self.interrupt_in_finalizer = interrupt_in_finalizer
    def run_tags(self):
        return {"benchmark": "toy", "env": "toy-env", "agent": "none", "objective": "baseline", "seed": "0"}
    def train(self, tracker):
        for i in range(self.steps):
            tracker.log_metrics({"train/loss": 1.0 / (i + 1)}, step=i)
            if hasattr(tracker, "flush"):
                tracker.flush()
            time.sleep(self.sleep_s)
            if i == self.interrupt_in_finalizer:
                InterruptedFinalizer()  # dropped at once: its __del__ runs here
            if self.crash:
                raise RuntimeError("toy trainer crashed on purpose")
        return {"final_return": float(self.steps)}
'''

TOY_GIN = """\
# A test-only experiment: the toy trainer from the toy plugin.
experiment.trainer = @trainers.toy
experiment.name = 'toy'
trainers.toy.steps = 3
"""


def make_distribution(site: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """Write an installed distribution (modules + .dist-info with entry points) into ``site``.

    This is exactly what pip leaves in site-packages; importlib.metadata finds it on sys.path.
    """
    site.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[mlr_registry.plugins]\n{lines}\n")
    return site


@pytest.fixture
def toy_site(tmp_path: Path) -> Path:
    """A site dir holding the toy plugin distribution (``toy-plugin``)."""
    return make_distribution(tmp_path / "site", "toy-plugin", {"toy_plugin": TOY_PLUGIN},
                             {"toy": "toy_plugin"})


@pytest.fixture
def toy_gin(tmp_path: Path) -> Path:
    path = tmp_path / "toy.gin"
    path.write_text(TOY_GIN)
    return path


def run_cli(args: list[str], cwd: Path, site: Path | None = None, timeout: float = 300,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m mlr_registry.run ARGS`` in a subprocess (a fresh registry and gin)."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    # This checkout first (it may not be pip-installed), then the test's plugin site, if any.
    paths = [str(REPO), *([str(site)] if site is not None else []), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "mlr_registry.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def mlflow_runs(db: Path, experiment: str):
    """All runs of ``experiment`` in the SQLite store ``db``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {db}"
    return client, client.search_runs([exp.experiment_id])


class RecordingTracker:
    """An in-memory tracker for in-process trainer runs: metric histories and artifact copies."""

    def __init__(self, keep: Path | None = None) -> None:
        self.history: dict[str, list[float]] = {}
        self.keep = keep
        self.files: dict[str, Path] = {}
        self.tags: dict[str, str] = {}

    def log_metrics(self, metrics, step):
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(float(value))

    def log_artifact(self, local_path, artifact_path=None):
        if self.keep is not None:  # the trainer deletes its temporary folder afterwards
            import shutil

            target = self.keep / f"{artifact_path}__{Path(local_path).name}"
            shutil.copy(local_path, target)
            self.files[f"{artifact_path}/{Path(local_path).name}"] = target

    def log_text(self, text, artifact_file):
        pass

    def set_tags(self, tags):
        self.tags.update(tags)


@contextlib.contextmanager
def tiny_trainer(*gin_files: str, bindings: tuple[str, ...] = ()) -> Iterator:
    """The trainer that ``gin_files`` (repo-relative) configure at the dry run's tiny sizes, then
    ``bindings``, built in this process. The gin config stays parsed inside the block (evaluation
    builds its envs from it) and is cleared after."""
    import gin

    from mlr_registry import config, registry
    from mlr_registry.dry_run import tiny_bindings
    from mlr_registry.training.experiment import experiment

    registry.load_all()
    tiny = tiny_bindings(gin_files, [])
    gin.clear_config()  # tiny_bindings leaves its parse behind
    config.parse([REPO / f for f in gin_files], (*tiny, *bindings))
    try:
        yield experiment().trainer()
    finally:
        gin.clear_config()


def train_in_process(*gin_files: str | Path, bindings: tuple[str, ...] = ()) -> RecordingTracker:
    """Build the trainer that ``gin_files`` (repo-relative) configure and train it in this process,
    recording every metric; the gin config is cleared afterwards."""
    import gin

    from mlr_registry import config, registry
    from mlr_registry.training.experiment import experiment

    registry.load_all()
    config.parse([REPO / f for f in gin_files], bindings)
    try:
        recorder = RecordingTracker()
        experiment().trainer().train(recorder)
    finally:
        gin.clear_config()
    return recorder


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist's worksteal scheduling each worker first gets a contiguous chunk of the
    collection. Put the minutes-long learning tests (``@pytest.mark.slow(minutes=...)``) at the
    front of the chunks, spread by their cost, so that no worker ends with two of them in a row
    while the others idle; stealing then balances the fast tests."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if workers < 2 or not slow:
        return
    fast = [item for item in items if item.get_closest_marker("slow") is None]
    cost = {item.nodeid: float(item.get_closest_marker("slow").kwargs.get("minutes", 1.0)) for item in slow}
    chunks: list[list] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for item in sorted(slow, key=lambda it: -cost[it.nodeid]):  # longest first, to the lightest chunk
        i = load.index(min(load))
        chunks[i].append(item)
        load[i] += cost[item.nodeid]
    # The chunk sizes worksteal will send: len(pending) // nodes_remaining, front to back.
    remaining, sizes = len(items), []
    for left in range(workers, 0, -1):
        sizes.append(remaining // left)
        remaining -= sizes[-1]
    ordered, rest = [], iter(fast)
    for chunk, size in zip(chunks, sizes, strict=True):
        ordered += chunk + [next(rest) for _ in range(max(size - len(chunk), 0))]
    ordered += list(rest)
    items[:] = ordered


def loss_context(agent):
    """The LossContext an agent gives its aux losses: a real agent's own, or one built from a
    test's fake agent (encoder, augment, latent_dim/shape, num_actions, discrete_actions, and
    projector / crop / observation_shape where it has them)."""
    import torch as _torch

    from mlr_registry.losses.auxiliary import LossContext

    if isinstance(getattr(agent, "loss_context", None), LossContext):
        return agent.loss_context
    return LossContext(encoder=agent.encoder, augment=agent.augment, latent_dim=int(agent.latent_dim),
                       latent_shape=tuple(agent.latent_shape),
                       observation_shape=tuple(getattr(agent, "observation_shape", (0, 0, 0))),
                       num_actions=int(agent.num_actions), discrete_actions=bool(agent.discrete_actions),
                       device=_torch.device("cpu"), projector=getattr(agent, "projector", None),
                       crop=getattr(agent, "crop", None))


def run_loss(loss, batch, agent):
    """(summed terms, metrics named as the agent records them: ``mlr_loss``) of one forward."""
    from mlr_registry.losses.auxiliary import checked_output, loss_names, prefixed

    output = checked_output(loss, loss(batch, loss_context(agent)))
    return output.total(), prefixed(loss_names([loss])[0], output.metrics)


def step_targets(loss):
    """Update the targets ``loss`` declares, as its agent does."""
    for target in loss.target_networks():
        target.update()
