"""mlr_registry: Mask-based Latent Reconstruction (MLR) and its baselines as registered,
gin-configurable components, tracked in MLflow.

Public API: :func:`register` and :func:`build` (see DESIGN.md's registry contract).
"""

from importlib import metadata as _metadata

from mlr_registry.registry import KINDS, build, register

try:
    __version__ = _metadata.version("mlr_registry")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["KINDS", "__version__", "build", "register"]
