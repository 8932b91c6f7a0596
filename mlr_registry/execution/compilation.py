"""``torch.compile`` applied from outside a component: in place on its networks, or whole on
the update phases it declares.

Two scopes (``execution.compile_scope``):

- ``"networks"``: each module an agent lists in ``networks()`` (and each parameter-holding child
  of its auxiliary losses, :func:`compile_targets`) is compiled in place
  (``nn.Module.compile``): parameters, ``state_dict`` keys and checkpoints are unchanged. Only
  modules whose forward draws no random numbers are listed (inductor's RNG differs from
  eager's), so a compiled forward computes what the eager one does.
- ``"update"`` (whole-update capture): each method a component names in ``compiled_phases``
  (forward passes, losses, backward, clipping and, where the lr is constant, the optimizer
  step) becomes one ``torch.compile`` call. Dynamo splits it only where it must
  (``backward()``), so augmentation, masking, the losses and Adam are fused by the backend, and
  ``compile_mode = "reduce-overhead"`` replays each piece as a CUDA graph. Random draws inside a
  phase then come from the backend's RNG: the same distributions, other numbers than eager's.
  Methods named in ``acting_phases`` are compiled for one-observation calls (the training
  loop's); batches (evaluation, whose size shrinks as episodes end) run eagerly rather than
  compile once per size.

A component declares phases by name; the compiled step is set on that instance only (its
class is untouched), so the component calls ``self._learn_phase(batch)`` as written and gets the
compiled one.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("networks", "update")
# torch.compile's backend unless ``execution.compile_backend`` names one. Tests set "aot_eager"
# (graph capture + AOT autograd without code generation: seconds instead of minutes on a CPU).
DEFAULT_COMPILE_BACKEND: str | Callable[..., Any] = "inductor"


def compile_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "compilation failed", not "the model is wrong"."""
    errors: list[type[BaseException]] = []
    try:
        from torch._dynamo.exc import TorchDynamoException
        errors.append(TorchDynamoException)
    except ImportError:  # pragma: no cover - torch without dynamo
        pass
    try:
        from torch._inductor.exc import CppCompileError, InductorError
        errors += [InductorError, CppCompileError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def compile_unsupported_reason(device: torch.device, backend: Any = "inductor") -> str | None:
    """Why ``torch.compile`` cannot run on ``device``, or None when it should. Only the
    "inductor" backend needs a code generator (Triton on CUDA, a C++ compiler on a CPU)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        dynamo = importlib.import_module("torch._dynamo")
    except ImportError as exc:  # pragma: no cover
        return f"torch._dynamo cannot be imported ({exc})"
    if not dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) does not support this Python version or platform"
    if backend != "inductor":
        return None
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:  # pragma: no cover
            return "torch.utils._triton is missing, so Triton cannot be checked"
        if not has_triton():
            return "Triton (inductor's GPU code generator) is not installed or does not support this GPU"
        return None
    if device.type == "cpu":
        from torch._inductor import config as inductor_config
        cxx = inductor_config.cpp.cxx
        candidates = [c for c in (cxx if isinstance(cxx, tuple) else (cxx,)) if c] or ["g++"]
        if not any(shutil.which(c) for c in candidates):
            return f"no C++ compiler found for inductor's CPU backend (looked for {', '.join(candidates)})"
        return None
    return f"inductor does not target device type {device.type!r}"


def compile_targets(aux_losses: Iterable[nn.Module]) -> list[nn.Module]:
    """The networks of auxiliary losses worth compiling: each loss's direct child modules that
    hold parameters and no active dropout (MLR: decoder, predictor, projectors, target encoder).
    Parameter-free children (maskers, which draw random numbers) stay eager."""
    found = []
    for loss in aux_losses:
        for child in loss.children():
            has_params = next(child.parameters(), None) is not None
            random = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in child.modules())
            if has_params and not random:
                found.append(child)
    return found


def resolve_attribute(obj: Any, dotted: str) -> tuple[Any, str]:
    """(the object that holds ``dotted``'s last attribute, that attribute's name)."""
    *path, name = dotted.split(".")
    for part in path:
        obj = getattr(obj, part)
    return obj, name


class CompiledStep:
    """A phase that runs compiled (``torch.compile(fn)``) while its :class:`Compiler` is on, and
    as the plain ``fn`` otherwise (off from the start, or after a failure).

    ``single_only``: compiled only when the first argument holds one observation (batch size 1).
    With CUDA graphs (``graphs``, compile mode "reduce-overhead") each call starts a new
    cudagraph-trees step and returns its tensors cloned: a graph's outputs live in its memory
    pool and the next replay overwrites them, while callers keep them longer (the metrics are
    read at the next log point, the priorities after the update)."""

    def __init__(self, fn: Callable[..., Any], compiled: Callable[..., Any] | None, graphs: bool = False,
                 single_only: bool = False):
        self.fn, self.compiled, self.graphs, self.single_only = fn, compiled, graphs, single_only

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None or (self.single_only and args[0].shape[0] != 1):
            return self.fn(*args, **kwargs)
        if not self.graphs:
            return self.compiled(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        return tree_map_only(torch.Tensor, torch.Tensor.clone, self.compiled(*args, **kwargs))


class Compiler:
    """What one component's compilation did: the modules compiled in place and the phases
    compiled whole, so that :meth:`disable` can put every one back to eager."""

    def __init__(self, backend: str | Callable[..., Any], mode: str):
        self.backend, self.mode = backend, mode
        self.modules: list[nn.Module] = []
        self.steps: list[CompiledStep] = []

    @property
    def active(self) -> bool:
        return bool(self.modules or self.steps)

    def compile_modules(self, modules: Iterable[nn.Module | None]) -> None:
        """Compile each module in place; a module given twice is compiled once."""
        for module in modules:
            if module is None or any(module is m for m in self.modules):
                continue
            if self.mode == "default":  # inductor's mode; other backends take none
                module.compile(backend=self.backend)
            else:
                module.compile(mode=self.mode, backend=self.backend)
            self.modules.append(module)

    def compile_phases(self, owner: Any, names: Iterable[str], single_only: bool = False) -> None:
        """Replace each named method of ``owner`` (dotted paths allowed) by a :class:`CompiledStep`
        on that instance. A phase should take and return tensors (or containers of them) and keep
        Python-side state (counters, lr values) out: a changed Python value is a guard failure
        and a recompile."""
        options = {} if self.mode == "default" else {"mode": self.mode}
        for dotted in names:
            holder, name = resolve_attribute(owner, dotted)
            fn = getattr(holder, name)
            # dynamic=False: an update's shapes are fixed for a run; dynamo's automatic dynamic
            # shapes would retrace with symbolic sizes, which torch.randint's size rejects.
            compiled = torch.compile(fn, backend=self.backend, dynamic=False, **options)
            step = CompiledStep(fn, compiled, graphs=self.mode == "reduce-overhead", single_only=single_only)
            object.__setattr__(holder, name, step)
            self.steps.append(step)

    def disable(self) -> None:
        """Every compiled module and phase back to eager."""
        for module in self.modules:
            module._compiled_call_impl = None  # what nn.Module.compile() set; None = eager __call__
        for step in self.steps:
            step.compiled = None
        self.modules.clear()
        self.steps.clear()


def failure_reason(exc: BaseException) -> str:
    """``Type: first line`` of the innermost cause (dynamo wraps the backend's own error)."""
    while getattr(exc, "inner_exception", None) is not None or exc.__cause__ is not None:
        exc = getattr(exc, "inner_exception", None) or exc.__cause__
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
