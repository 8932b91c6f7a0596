"""A checkpoint on disk: its files, written atomically and read back verified.

A checkpoint is a directory ``<root>/step_<N>/`` with three files:

- ``tensors.pt``: ``torch.save`` of the state tree (dicts, lists, tuples, tensors, Python
  scalars and strings) with every numpy array replaced by a reference into ``arrays.npz``;
  read back with ``torch.load(weights_only=True)``, which never runs pickled code.
- ``arrays.npz``: the numpy arrays (``np.savez``; read with ``allow_pickle=False``).
- ``meta.json``: format version, step, trainer, the run's operative config (flattened params)
  and its hash, and the size and SHA-256 of the two data files.

Atomicity: the files are written into ``<root>/.tmp-step_<N>-<pid>/``, fsynced, and the
directory is renamed to ``step_<N>`` (``os.replace``); only then is the text file
``<root>/latest`` (holding ``step_<N>``) replaced atomically, and older checkpoints beyond
``keep`` are deleted. A process killed at any instant leaves ``latest`` naming a complete
checkpoint (or no ``latest`` at all). Loading verifies sizes and checksums first, so a
truncated or altered file is a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlr_registry.errors import CheckpointError

FORMAT_VERSION = 1
LATEST = "latest"
TENSORS, ARRAYS, META = "tensors.pt", "arrays.npz", "meta.json"
_ARRAY_REF = "__npz__"
# Params that change how a run is watched, saved or spread over CPU threads, never what it
# computes (a thread count can move only the last bits of parallel sums): they may differ
# between a checkpoint and the run that resumes it.
RUN_CONTROL_PARAMS = ("progress", "checkpoint_every", "threads")


# --------------------------------------------------------------------------- state trees

def _split(obj: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    """Copy of ``obj`` with numpy arrays moved into ``arrays`` (numpy scalars become Python's)."""
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {_ARRAY_REF: key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: _split(v, arrays, f"{path}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_split(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.dtype, torch.Size)):
        return obj
    raise TypeError(f"checkpoint state at {path or '/'} holds a {type(obj).__name__}; only tensors, numpy "
                    "arrays, Python scalars, strings and dicts/lists/tuples of them can be saved")


def _join(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_REF}:
            return arrays[obj[_ARRAY_REF]]
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_join(v, arrays) for v in obj)
    return obj


def config_hash(params: Mapping[str, str]) -> str:
    """SHA-256 of the params that determine results (run-control params left out)."""
    kept = {k: v for k, v in params.items() if k.rsplit(".", 1)[-1] not in RUN_CONTROL_PARAMS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


# --------------------------------------------------------------------------- save / load

def save_checkpoint(root: str | Path, step: int, state: Mapping[str, Any], config: Mapping[str, str],
                    trainer: str, keep: int = 1, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``state`` as ``<root>/step_<step>/`` atomically, point ``latest`` at it and delete
    all but the newest ``keep`` checkpoints. Returns the checkpoint directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{int(step):09d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    arrays: dict[str, np.ndarray] = {}
    tree = _split(dict(state), arrays, "")
    torch.save(tree, tmp / TENSORS)
    np.savez(tmp / ARRAYS, **arrays)
    files = {}
    for fname in (TENSORS, ARRAYS):
        _fsync(tmp / fname)
        files[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": _sha256(tmp / fname)}
    meta = {"format_version": FORMAT_VERSION, "step": int(step), "trainer": trainer,
            "created_unix": time.time(), "config_hash": config_hash(config), "config": dict(config),
            "files": files, **(extra or {})}
    (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    _fsync(tmp / META)
    _fsync(tmp)
    if final.exists():  # a leftover from a killed process past the checkpoint ``latest`` names
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    _write_atomic_text(root / LATEST, name + "\n")
    old = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name != name)
    for path in old[:max(len(old) - (keep - 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".tmp-*"):  # temp dirs of killed processes
        if not path.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(path, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint directory ``<root>/latest`` names, or None when there is none."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not name.startswith("step_") or "/" in name:
        raise CheckpointError(f"{pointer} is corrupt: it holds {name[:60]!r}, expected a name like 'step_000001000'")
    path = Path(root) / name
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {name}, but {path} does not exist")
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / META
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path} is missing: {path} is not a complete checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is corrupt or truncated: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(f"{meta_path} has format_version {version!r}; this version reads {FORMAT_VERSION}")
    return meta


def check_config(meta: Mapping[str, Any], config: Mapping[str, str], where: Path) -> None:
    """CheckpointError listing the differing params when the checkpoint's config is not ``config``."""
    if meta.get("config_hash") == config_hash(config):
        return
    saved = meta.get("config", {})
    keys = sorted(k for k in set(saved) | set(config)
                  if saved.get(k) != config.get(k) and k.rsplit(".", 1)[-1] not in RUN_CONTROL_PARAMS)
    shown = "; ".join(f"{k}: checkpoint {saved.get(k, '(unset)')}, now {config.get(k, '(unset)')}" for k in keys[:5])
    more = f" (and {len(keys) - 5} more)" if len(keys) > 5 else ""
    raise CheckpointError(f"{where / META} was written for a different config: {shown or 'config hash differs'}{more}")


def load_checkpoint(path: str | Path, config: Mapping[str, str] | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, meta)`` of the checkpoint directory ``path``, verified first: sizes and
    checksums of its files, and (when given) that it was written for ``config``."""
    path = Path(path)
    meta = read_meta(path)
    if config is not None:
        check_config(meta, config, path)
    for fname, expected in meta.get("files", {}).items():
        file = path / fname
        if not file.is_file():
            raise CheckpointError(f"{file} is missing from the checkpoint")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{file} is truncated or corrupt: {size} bytes, the checkpoint wrote "
                                  f"{expected['bytes']}")
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{file} is corrupt: its SHA-256 differs from the one in {META}")
    try:
        tree = torch.load(path / TENSORS, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{path / TENSORS} cannot be loaded: {str(exc).splitlines()[0]}") from None
    try:
        with np.load(path / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path / ARRAYS} cannot be loaded: {str(exc).splitlines()[0]}") from None
    return _join(tree, arrays), meta
