"""Which MLflow tracking store a run goes to, and where its artifacts go: ``--tracking-uri``,
else ``MLFLOW_TRACKING_URI``, else the SQLite file ``mlruns.db`` in the working directory, with
its artifacts in ``mlartifacts/`` beside the database file."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"


def resolve_tracking_uri(flag: str | None = None) -> str:
    """The flag, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite store in the cwd."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def missing_sqlite_store(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` store that does not exist (yet), else None. Opening one
    creates it (and its folder), so readers check first: a mistyped path is an error, not an
    empty store."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and not Path(tracking_uri[len(prefix):]).exists():
        return Path(tracking_uri[len(prefix):])
    return None


def sqlite_artifact_location(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside the database file of a ``sqlite:///PATH`` store (as a file URI),
    for the default store and one given with ``--tracking-uri`` alike; None (MLflow's choice, or
    a server's) for any other store."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    db = tracking_uri[len(prefix):].split("?", 1)[0]  # sqlite:////abs.db keeps its leading /
    if not db or db == ":memory:":
        return None
    return (Path(db).resolve().parent / DEFAULT_ARTIFACT_DIR).as_uri()
