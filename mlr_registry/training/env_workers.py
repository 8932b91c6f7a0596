"""Evaluation workers: processes that build and step evaluation envs for the trainer, with the
same scores bit for bit as envs stepped in its process (``evaluation.py`` says why they exist).

Workers are fresh interpreters (``python -m mlr_registry.training.env_workers <fd>``, talking
over a socket pair), not forks: a forked child inherits a half-copied renderer (Mesa's llvmpipe
threads do not survive ``fork``; MuJoCo's first render in the child hangs), the CUDA context
and the trainer's threads. Nor multiprocessing's "spawn", which re-runs the trainer's main
script in each child (a script without a main guard would start a training there). A worker
gets this process's ``sys.path`` and its whole gin config (``gin.config_str()``), loads the
registry and re-parses it, so an env built there is configured exactly as here. Workers take
a second or more to start, so an :class:`EnvWorkers` pool lives for the whole run. They run
in their own session (Ctrl-C reaches only the trainer, which closes them) and exit when the
trainer's end of their socket closes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import gin
import numpy as np

from mlr_registry.training.eval_envs import EnvFactory, _close_envs, _open_envs, _step_envs


class EnvWorkers:
    """``workers`` worker processes that build and step evaluation envs, kept for a run.

    They start at the first :meth:`open` and run until :meth:`close` (a later ``open`` starts
    them again); an error in an episode closes them too (their sockets could hold unread
    replies). ``gin_config`` (default: this process's ``gin.config_str()`` at construction;
    "" = none) is parsed in each worker before it builds envs.
    """

    def __init__(self, workers: int, gin_config: str | None = None):
        if workers < 1:
            raise ValueError(f"EnvWorkers needs at least one worker, got {workers}")
        self.workers = workers
        self.gin_config = gin.config_str() if gin_config is None else gin_config
        self._conns: list[Connection] = []
        self._procs: list[Any] = []

    def _start(self) -> None:
        path = os.pathsep.join(p for p in sys.path if p)  # the env's module must import there too
        try:
            for w in range(self.workers):
                ours, theirs = socket.socketpair()
                with theirs:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": path},
                        start_new_session=True)  # Ctrl-C goes to the trainer, which closes the workers
                self._procs.append(proc)
                self._conns.append(Connection(ours.detach()))
                self._conns[w].send(self.gin_config)
            for w in range(self.workers):
                self._receive(w)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers (empty before the first :meth:`open`)."""
        return [proc.pid for proc in self._procs]

    def open(self, make_env: EnvFactory, seeds: Sequence[int]) -> _PooledEnvs:
        """Build and reset one env per seed in the workers (started now if they are not running)."""
        if not self._procs:
            self._start()
        return _PooledEnvs(self, make_env, seeds)

    def _send(self, w: int, message: Any) -> None:
        try:
            self._conns[w].send(message)
        except (BrokenPipeError, ConnectionResetError):
            self._receive(w)  # reports how the worker ended

    def _receive(self, w: int) -> Any:
        try:
            status, payload = self._conns[w].recv()
        except (EOFError, OSError):
            try:
                code = self._procs[w].wait(timeout=5)
            except subprocess.TimeoutExpired:  # its socket broke but it still runs: stop it
                self._procs[w].kill()
                code = self._procs[w].wait()
            raise RuntimeError(f"evaluation worker {w} died (exit code {code}); "
                               "set eval_workers = 0 to step the envs in the trainer's process") from None
        if status == "error":
            raise RuntimeError(f"evaluation worker {w} failed (eval_workers = 0 steps the envs in the "
                               f"trainer's process):\n{payload}")
        return payload

    def close(self) -> None:
        """Stop the workers (each closes its envs); kill those that do not stop within 10 s."""
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> EnvWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PooledEnvs:
    """Env i of an evaluation lives in worker i % W; observations come back through the sockets
    (a few MB per lockstep step at most: 100 Atari stacks of 28 KB)."""

    def __init__(self, pool: EnvWorkers, make_env: EnvFactory, seeds: Sequence[int]):
        self.pool, n = pool, len(seeds)
        self.owner = np.arange(n) % min(pool.workers, n)
        self.used = sorted(set(self.owner.tolist()))
        try:
            for w in self.used:
                pool._send(w, ("open", make_env, [int(s) for s in np.asarray(seeds)[self.owner == w]]))
            first = {w: pool._receive(w) for w in self.used}
        except BaseException:
            pool.close()
            raise
        self.obs = np.empty((n, *first[0].shape[1:]), dtype=first[0].dtype)
        for w in self.used:
            self.obs[self.owner == w] = first[w]

    def step(self, index: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        owner = self.owner[index]
        busy = [w for w in self.used if (owner == w).any()]
        rewards, done = np.zeros(len(index)), np.zeros(len(index), dtype=bool)
        try:
            for w in busy:
                mine = owner == w
                # a worker's envs are numbered by their rank among its envs: i // W
                self.pool._send(w, ("step", index[mine] // len(self.used), actions[mine]))
            for w in busy:
                mine = owner == w
                self.obs[index[mine]], rewards[mine], done[mine] = self.pool._receive(w)
        except BaseException:
            self.pool.close()
            raise
        return rewards, done

    def close(self) -> None:
        if not self.pool._procs:
            return
        try:
            for w in self.used:
                self.pool._send(w, ("close",))
            for w in self.used:
                self.pool._receive(w)
        except BaseException:
            self.pool.close()
            raise


def _serve(conn: Connection) -> None:
    """A worker: parse the gin config it is sent, then open / step / close envs on request
    until it gets None or its socket closes."""
    envs: list[Any] = []
    try:
        gin_config = conn.recv()
        if gin_config:
            import mlr_registry.training.experiment  # noqa: F401  (registers `experiment`)
            from mlr_registry import registry

            registry.load_all()
            gin.parse_config(gin_config)
        conn.send(("ok", None))
        while (message := conn.recv()) is not None:
            if message[0] == "open":
                _, make_env, seeds = message
                envs, first = _open_envs(make_env, seeds)
                conn.send(("ok", np.stack(first)))
            elif message[0] == "step":
                _, ranks, actions = message
                observations, rewards, done = _step_envs([envs[r] for r in ranks], actions)
                conn.send(("ok", (np.stack(observations), rewards, done)))
            else:  # "close"
                _close_envs(envs)
                envs = []
                conn.send(("ok", None))
    except EOFError:  # the trainer went away
        pass
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        _close_envs(envs)
        conn.close()


if __name__ == "__main__":  # a worker: python -m mlr_registry.training.env_workers <socket fd>
    _serve(Connection(int(sys.argv[1])))
