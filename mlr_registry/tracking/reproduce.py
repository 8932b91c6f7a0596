"""A run's description (MLflow's ``mlflow.note.content`` tag, Markdown in the UI): the command that
trains it again, at the git commit it ran from (:func:`git_commit`)."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

NOTE_TAG = "mlflow.note.content"
COMMAND = "python -m mlr_registry.run"


def command_line(gin_files: Sequence[str], bindings: Sequence[str]) -> str:
    """``python -m mlr_registry.run --gin A --gin B --bind 'x = 1'``, quoted for a POSIX shell.
    ``--tag`` and ``--tracking-uri`` are left out: they say where a run is filed, not what it
    trains."""
    parts = [COMMAND]
    for path in gin_files:
        parts.append(f"--gin {shlex.quote(str(path))}")
    for binding in bindings:
        parts.append(f"--bind {shlex.quote(binding)}")
    return " ".join(parts)


def reproduce_note(gin_files: Sequence[str], bindings: Sequence[str], commit: str, version: str) -> str:
    """The description: the checkout, then the command (gin paths as given, relative to the
    folder it ran from)."""
    clean = commit.removesuffix("-dirty")
    lines = [f"Reproduce this run (mlr_registry {version}, git commit `{commit}`):", "", "```bash"]
    if clean != "unknown":
        lines.append(f"git checkout {clean}")
    lines += [command_line(gin_files, bindings), "```"]
    if commit.endswith("-dirty"):
        lines += ["", "The checkout had uncommitted changes, which this command does not restore."]
    return "\n".join(lines) + "\n"


def git_commit(path: Path | None = None) -> str:
    """The commit of the source tree the package runs from ('unknown' outside a checkout)."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
