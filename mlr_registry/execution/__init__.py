"""How a run executes, kept out of the algorithm's files: precision, ``torch.compile`` (in place
or whole-update capture, with CUDA graphs), channels-last memory, cuDNN autotuning, host↔device
transfers that do not wait for the GPU, and the env/update overlap of the training loop.

Configured once, by the ``execution.*`` gin bindings (:class:`Execution`); the trainer applies
it to the agent and the replay it built (:meth:`Execution.apply`). docs/gpu.md says what each
setting does and what it gains.
"""

from mlr_registry.execution.layer import Execution
from mlr_registry.execution.transfer import HostCopy, to_device

__all__ = ["Execution", "HostCopy", "to_device"]
