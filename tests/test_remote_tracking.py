"""Checkpoints and ``--resume`` against a real MLflow tracking server (``mlflow server`` on
localhost, artifacts proxied through it): the path where checkpoints are written to a local
staging folder, uploaded into the run's artifacts, and downloaded again to resume.

The run is killed with SIGKILL after its first checkpoint reached the server; the resumed run
finishes from that checkpoint, and no staging or download folder is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from test_resume import ATARI, _env, _wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` with a SQLite backend and a proxied artifact folder; yields (uri, folder)."""
    root = tmp_path_factory.mktemp("server")
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'mlruns.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield uri, root / "artifacts"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def _staging_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("mlr_registry_ckpt_*")}


@pytest.mark.slow
def test_checkpoints_upload_to_the_server_and_resume_from_it(server, tmp_path):
    uri, artifacts = server
    before = _staging_folders()
    log = tmp_path / "stderr.txt"
    args = [sys.executable, "-m", "mlr_registry.run", *ATARI, "--tracking-uri", uri]
    proc = subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=open(log, "w"))

    def uploaded() -> Path | None:  # the server's copy of the run's latest pointer
        found = list(artifacts.glob("*/*/artifacts/checkpoints/latest"))
        return found[0] if found else None

    pointer = _wait_for(uploaded, proc, log, "the first checkpoint's upload")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    run_id = pointer.parts[-4]
    step = json.loads((pointer.parent / pointer.read_text().strip() / "meta.json").read_text())["step"]
    assert step == 24  # checkpoint_every = 24 in ATARI
    assert not (tmp_path / "mlartifacts").exists()  # nothing went to a local artifact folder

    resumed = subprocess.run([sys.executable, "-m", "mlr_registry.run", "--resume", run_id, "--tracking-uri", uri],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming MLflow run {run_id} from step 24" in resumed.stderr

    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED" and "final_return" in run.data.metrics
    assert run.data.tags["resumed_from_step"] == "24"
    # the resumed run wrote its own checkpoint at step 48; the server keeps only the newest
    assert pointer.read_text().strip() == "step_000000048"
    assert (pointer.parent / "step_000000048" / "meta.json").is_file()
    assert sorted(p.name for p in pointer.parent.iterdir()) == ["latest", "step_000000048"]
    # the killed process's staging folder cannot be cleaned (SIGKILL); the resumed run's
    # download and staging folders are
    assert len(_staging_folders() - before) == 1


def test_a_checkpoint_that_was_not_uploaded_keeps_its_staging_folder(tmp_path, monkeypatch, capsys):
    from mlr_registry.tracking.mlflow_run import TrackedRun

    run = TrackedRun(f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="x")
    run.start({}, {})
    monkeypatch.setattr(run, "artifact_dir", lambda: None)  # as for a remote artifact store
    uploaded, failing = run.checkpoint_root(), run.checkpoint_root()
    for root in (uploaded, failing):
        (root / "step_1").mkdir()
        (root / "latest").write_text("step_1")

    def refuse(*args, **kwargs):
        raise ConnectionError("artifact store unreachable")

    monkeypatch.setattr(run.client, "log_artifacts", refuse)
    with pytest.raises(ConnectionError):
        run.upload_checkpoint(failing / "step_1")
    run.end("FAILED")
    assert not uploaded.exists()  # an ordinary staging folder goes with the run
    assert (failing / "step_1").is_dir()  # the only copy of a checkpoint stays, and is named
    assert f"checkpoint {failing / 'step_1'} was not uploaded" in capsys.readouterr().err


def test_checkpoint_download_tells_absent_from_unreachable(tmp_path, monkeypatch):
    """A remote run without a checkpoint downloads as None (the CLI then says it cannot resume,
    exit 2, and a sweep starts the trial afresh); a store that cannot be read raises instead, so
    a network failure never reads as "no checkpoint" and never throws a trial's progress away."""
    from mlr_registry.tracking.mlflow_run import TrackedRun

    monkeypatch.chdir(tmp_path)  # the store's artifacts go to ./mlartifacts
    run = TrackedRun(f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="x")
    run.start({}, {})
    run_id = run.run_id
    monkeypatch.setattr(run, "artifact_dir", lambda: None)  # as for a remote artifact store
    assert run.download_checkpoints(run_id) is None
    staged = run.checkpoint_root()
    (staged / "step_7").mkdir()
    (staged / "step_7" / "meta.json").write_text('{"step": 7}')
    (staged / "latest").write_text("step_7")
    run.upload_checkpoint(staged / "step_7")
    root = run.download_checkpoints(run_id)
    assert (root / "latest").read_text() == "step_7" and (root / "step_7" / "meta.json").is_file()

    def refuse(*args, **kwargs):
        raise ConnectionError("artifact store unreachable")

    monkeypatch.setattr(run.client, "list_artifacts", refuse)
    with pytest.raises(ConnectionError):
        run.download_checkpoints(run_id)
    run.end("FINISHED")
