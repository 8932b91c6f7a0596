"""The old name of :mod:`mlr_registry.fast_path`, kept for code that imports it from here.

The fast path moved to the package's top level because the replay compiles its data path with
it too, and the replay knows nothing of agents (DESIGN.md). This module is the same module
object under its old name, so settings changed through either name apply to both.
"""

import sys

from mlr_registry import fast_path as _fast_path

sys.modules[__name__] = _fast_path
