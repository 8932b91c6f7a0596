"""The GPU fast path the agents and the replay share: bf16 autocast and ``torch.compile``.

Neither is part of the paper (the references train in fp32, eagerly); both are off by
default, so the default path is the faithful reference path. An agent builds one
:class:`FastPath` from its gin parameters ``precision``, ``compile`` and ``compile_mode`` and
uses it three ways:

- ``with fast.autocast():`` around the forward passes of its networks (and of its auxiliary
  losses). Master weights, gradients, optimizer state and every loss stay float32: the agent
  casts network outputs to float before a loss, and MLR's distance is computed in float32
  (``losses/mlr.py``). bf16 needs no gradient scaler (its exponent range is float32's).
- ``compile_scope = "networks"``: ``fast.compile_modules(...)`` after the networks exist
  compiles each module in place (``nn.Module.compile``), so parameters, ``state_dict`` keys and
  checkpoints are unchanged. Only modules whose forward draws no random numbers are given
  (inductor's RNG differs from eager's), so a compiled forward computes what the eager one does.
- ``compile_scope = "update"`` (whole-update capture): ``fast.compile_step(fn)`` wraps an
  agent's update phase (forward passes, losses, backward, gradient clipping and, where the lr
  is constant, the optimizer step) in one ``torch.compile`` call. Dynamo splits it only where it
  must (``backward()``), so augmentation, masking, the C51 projection, the losses and Adam are
  fused by the backend, and ``compile_mode = "reduce-overhead"`` replays each piece as a CUDA
  graph. Random draws inside the phase (augmentation, masks, the policy's noise) then come from
  the backend's RNG: the same distributions, other numbers than eager's under inductor.
  Bookkeeping with Python state (update counters, noise resets, target copies, lr schedules,
  metric conversion) stays eager around the phases, so nothing recompiles from step to step.
- ``fast.run(fn, ...)`` around an update: a compile failure at run time (no C++ compiler, no
  Triton, an unsupported op) warns once with the reason, switches compilation off and runs
  ``fn`` again eagerly. A failure can come after part of the update ran (a phase stepped its
  optimizer, then the next phase failed to compile), so while compiled code is unproven (its
  first :data:`PROVING_CALLS` updates) ``run`` snapshots the agent's state and the torch RNGs
  first (``protect``) and restores them before the eager retry: the retry is then exactly the
  eager update, random draws included.

A switch that cannot take effect (bf16 on a GPU without bf16, compile where dynamo or its
backend is missing) is turned off with a ``RuntimeWarning`` naming the reason, and the reason
is kept in :attr:`FastPath.notes` (``describe()`` gives loggable strings).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from mlr_registry.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("networks", "update")
PROVING_CALLS = 2  # updates run with a snapshot to roll back to; later ones have compiled all phases
# torch.compile's backend for every FastPath built without one. Tests set "aot_eager" (graph
# capture + AOT autograd without code generation: seconds instead of minutes on a CPU).
DEFAULT_COMPILE_BACKEND: str | Callable[..., Any] = "inductor"

T = TypeVar("T")


def _compile_errors() -> tuple[type[BaseException], ...]:
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


def bf16_unsupported_reason(device: torch.device) -> str | None:
    """Why bf16 autocast cannot run on ``device``, or None when it can."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name(device)} has no bf16 support (needs compute capability >= 8.0)"
        return None
    if device.type == "cpu":
        return None
    if not torch.amp.is_autocast_available(device.type):
        return f"torch has no autocast for device type {device.type!r}"
    return None


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


class CompiledStep:
    """An update phase that runs compiled (``torch.compile(fn)``) while its :class:`FastPath`
    compiles, and as the plain ``fn`` otherwise (off from the start, or after a failure).

    With CUDA graphs (``graphs``, compile mode "reduce-overhead") each call starts a new
    cudagraph-trees step and returns its tensors cloned: a graph's outputs live in its memory
    pool and the next replay overwrites them, while callers keep them longer (the metrics are
    read at the next log point, the priorities after the update)."""

    def __init__(self, fn: Callable[..., Any], compiled: Callable[..., Any] | None, graphs: bool = False):
        self.fn, self.compiled, self.graphs = fn, compiled, graphs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        if not self.graphs:
            return self.compiled(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        return tree_map_only(torch.Tensor, torch.Tensor.clone, self.compiled(*args, **kwargs))


class FastPath:
    """Precision and compilation switches of one agent.

    Args:
        owner: the gin name of the owning component (``rainbow``, ``sac``), for messages.
        device: the agent's device.
        precision: "fp32" (default, the references' arithmetic); "bf16" = bf16 autocast around
            network forwards, float32 master weights and losses (falls back to fp32 with a
            warning where bf16 is unsupported); "auto" = bf16 on a bf16-capable CUDA device,
            else fp32 (no warning).
        compile: False (default); True = ``torch.compile`` the given modules (falls back to
            eager with a warning where unsupported); "auto" = compile on CUDA only (on a CPU
            inductor's first compilation takes tens of seconds, longer than short runs gain).
        compile_mode: ``torch.compile``'s mode. "reduce-overhead" adds CUDA graphs (replay of
            each compiled graph, static input shapes), GPU only.
        compile_scope: what is compiled: "networks" (default: each network module in place) or
            "update" (whole-update capture: each update phase the agent hands to
            :meth:`compile_step`, optimizer step included where its lr is constant).
        compile_backend: ``torch.compile``'s backend; None = :data:`DEFAULT_COMPILE_BACKEND`
            ("inductor").
        channels_last: False (default); True = conv weights in channels-last memory (see
            :meth:`apply_memory_format`); "auto" = on CUDA only.
        cudnn_benchmark: False (default); True = let cuDNN time its convolution algorithms on
            each new input shape and keep the fastest (``torch.backends.cudnn.benchmark``, a
            process-wide setting: the update's shapes never change); "auto" = on CUDA only.
            Other algorithms round differently: the same function within float rounding.
    """

    def __init__(self, owner: str, device: torch.device, precision: str = "fp32",
                 compile: bool | str = False, compile_mode: str = "default",  # noqa: A002 - gin name
                 compile_backend: str | Callable[..., Any] | None = None, compile_scope: str = "networks",
                 channels_last: bool | str = False, cudnn_benchmark: bool | str = False):
        if precision not in PRECISIONS:
            raise ConfigError(f"{owner}.precision = {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if not (compile is True or compile is False or compile == "auto"):
            raise ConfigError(f"{owner}.compile = {compile!r}; expected False, True or 'auto'")
        if compile_mode not in COMPILE_MODES:
            raise ConfigError(f"{owner}.compile_mode = {compile_mode!r}; expected one of {', '.join(COMPILE_MODES)}")
        for name, value in (("channels_last", channels_last), ("cudnn_benchmark", cudnn_benchmark)):
            if not (value is True or value is False or value == "auto"):
                raise ConfigError(f"{owner}.{name} = {value!r}; expected False, True or 'auto'")
        if compile_scope not in COMPILE_SCOPES:
            raise ConfigError(f"{owner}.compile_scope = {compile_scope!r}; expected one of "
                              f"{', '.join(COMPILE_SCOPES)}")
        self.owner, self.device = owner, torch.device(device)
        self.compile_mode, self.compile_scope = compile_mode, compile_scope
        self.compile_backend = DEFAULT_COMPILE_BACKEND if compile_backend is None else compile_backend
        self.notes: dict[str, str] = {}

        # Precision.
        self.dtype: torch.dtype | None = None
        if precision != "fp32":
            reason = bf16_unsupported_reason(self.device)
            if precision == "auto" and self.device.type != "cuda":
                reason = reason or f"'auto' uses bf16 on CUDA only (device {self.device})"
            if reason is None:
                self.dtype = torch.bfloat16
            else:
                self._off("precision", f"{owner}.precision = {precision!r} runs in fp32: {reason}",
                          warn=precision == "bf16")

        # Compilation.
        self.compile_enabled = False
        if compile is not False:
            reason = compile_unsupported_reason(self.device, self.compile_backend)
            if compile == "auto" and self.device.type != "cuda":
                reason = reason or f"'auto' compiles on CUDA only (device {self.device})"
            if compile_mode == "reduce-overhead" and self.device.type != "cuda":
                reason = reason or "compile_mode 'reduce-overhead' (CUDA graphs) needs a CUDA device"
            if reason is None:
                self.compile_enabled = True
            else:
                self._off("compile", f"{owner}.compile = {compile!r} runs eagerly: {reason}", warn=compile is True)
        # Memory format: channels-last conv weights ('auto' = on CUDA only, where cuDNN's
        # tensor-core convolutions want NHWC and otherwise convert NCHW tensors at every conv).
        self.channels_last = channels_last is True or (channels_last == "auto" and self.device.type == "cuda")
        if channels_last == "auto" and not self.channels_last:
            self._off("channels_last", f"{owner}.channels_last = 'auto' keeps NCHW: channels-last is on "
                      f"for CUDA only (device {self.device})", warn=False)
        # cuDNN autotuning: process-wide, so set here and never unset by another agent's False.
        self.cudnn_benchmark = cudnn_benchmark is not False and self.device.type == "cuda"
        if cudnn_benchmark is not False and not self.cudnn_benchmark:
            self._off("cudnn_benchmark", f"{owner}.cudnn_benchmark = {cudnn_benchmark!r} is off: cuDNN "
                      f"autotuning needs a CUDA device (device {self.device})", warn=cudnn_benchmark is True)
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        self._compiled: list[nn.Module] = []
        self._steps: list[CompiledStep] = []
        self._state_hooks: tuple[Callable[[], Any], Callable[[Any], None]] | None = None
        self._proven_calls = 0

    @property
    def precision(self) -> str:
        """The precision in effect: "bf16" or "fp32"."""
        return "bf16" if self.dtype is torch.bfloat16 else "fp32"

    def _off(self, switch: str, message: str, warn: bool) -> None:
        self.notes[switch] = message
        if warn:
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def describe(self) -> dict[str, str]:
        """What is in effect and why, as strings (for run params/tags): precision, compile and
        the reason of each switch that was turned off."""
        info = {"precision": self.precision,
                "compile": (f"{self.compile_backend}/{self.compile_mode}/{self.compile_scope}"
                            if self.compile_enabled else "off")}
        if self.channels_last:
            info["memory_format"] = "channels_last"
        if self.cudnn_benchmark:
            info["cudnn_benchmark"] = "on"
        info.update({f"{k}_note": v for k, v in self.notes.items()})
        return info

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """bf16 autocast on the agent's device type when bf16 is in effect, else nothing."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            yield

    def apply_memory_format(self, module: nn.Module) -> None:
        """With ``channels_last``: every 4-D parameter and buffer of ``module`` in channels-last
        memory (in place: parameter objects, optimizers and ``state_dict`` keys are unchanged),
        so each convolution's output, and the next convolution's input, is channels-last too;
        only an encoder's first input is converted. The same values; the kernels' summation
        order may differ (``tests/test_fast_path.py`` bounds it)."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)

    def compile_modules(self, modules: Iterable[nn.Module | None]) -> None:
        """Compile each module in place (no-op when compilation is off). Give only modules whose
        forward draws no random numbers; a module given twice is compiled once."""
        if not self.compile_enabled or self.compile_scope != "networks":
            return
        for module in modules:
            if module is None or any(module is m for m in self._compiled):
                continue
            if self.compile_mode == "default":  # inductor's mode; other backends take none
                module.compile(backend=self.compile_backend)
            else:
                module.compile(mode=self.compile_mode, backend=self.compile_backend)
            self._compiled.append(module)

    def compile_step(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` as one compiled unit when the scope is "update" and compilation is on, else
        ``fn`` itself (behind the same wrapper, so a later fall-back needs no rewiring). ``fn``
        should take and return tensors (or containers of them) and keep Python-side state
        (counters, lr values) out: a changed Python value is a guard failure and a recompile."""
        compiled = None
        if self.compile_enabled and self.compile_scope == "update":
            options = {} if self.compile_mode == "default" else {"mode": self.compile_mode}
            # dynamic=False: an update's shapes are fixed for a run; dynamo's automatic dynamic
            # shapes would retrace with symbolic sizes, which torch.randint's size rejects.
            compiled = torch.compile(fn, backend=self.compile_backend, dynamic=False, **options)
        step = CompiledStep(fn, compiled, graphs=self.compile_mode == "reduce-overhead")
        if compiled is not None:
            self._steps.append(step)
        return step

    def disable_compile(self, reason: str) -> None:
        """Turn compilation off (every compiled module and phase back to eager), warn with ``reason``."""
        for module in self._compiled:
            module._compiled_call_impl = None  # what nn.Module.compile() set; None = eager __call__
        for step in self._steps:
            step.compiled = None
        self._compiled.clear()
        self._steps.clear()
        self.compile_enabled = False
        self._off("compile", f"{self.owner}.compile turned off: {reason}", warn=True)

    def protect(self, get_state: Callable[[], Any], set_state: Callable[[Any], None]) -> None:
        """How :meth:`run` rolls a failed compiled update back: ``get_state()`` returns the
        agent's learning state (networks, optimizers, counters; it is deep-copied) and
        ``set_state(copy)`` puts it back (the agents' ``checkpoint_state`` pair)."""
        self._state_hooks = (get_state, set_state)

    def _snapshot(self) -> Callable[[], None] | None:
        """A closure that restores the agent (when :meth:`protect` was called) and the torch RNGs."""
        state = copy.deepcopy(self._state_hooks[0]()) if self._state_hooks else None
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

        def restore() -> None:
            if self._state_hooks is not None:
                self._state_hooks[1](state)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        return restore

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``; if compiled code fails to compile, roll back (during the
        first updates, see :meth:`protect`), switch compilation off and run ``fn`` eagerly."""
        if not self._compiled and not self._steps:
            return fn(*args, **kwargs)
        restore = self._snapshot() if self._proven_calls < PROVING_CALLS else None
        out = self._eager_on_failure(fn, args, kwargs, restore)
        self._proven_calls += 1
        return out

    def run_stateless(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`run` for a call that changes no learning state (acting): nothing to roll back,
        and it does not count towards the updates that prove the compiled code."""
        if not self._compiled and not self._steps:
            return fn(*args, **kwargs)
        return self._eager_on_failure(fn, args, kwargs, None)

    def _eager_on_failure(self, fn: Callable[..., T], args: tuple, kwargs: dict,
                          restore: Callable[[], None] | None) -> T:
        try:
            return fn(*args, **kwargs)
        except _compile_errors() as exc:
            if restore is not None:
                restore()
            self.disable_compile(f"compilation failed ({_reason(exc)}); running eagerly")
            return fn(*args, **kwargs)


def _reason(exc: BaseException) -> str:
    """``Type: first line`` of the innermost cause (dynamo wraps the backend's own error)."""
    while getattr(exc, "inner_exception", None) is not None or exc.__cause__ is not None:
        exc = getattr(exc, "inner_exception", None) or exc.__cause__
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
