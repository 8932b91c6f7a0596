"""The execution layer: how a run executes (precision, compilation, memory format, cuDNN
autotuning, the attention kernel, env/update overlap, pipelining), configured once (the ``execution.*`` gin
bindings) and applied by the trainer to the agent and the replay it built.

None of it is part of the paper (the references train in fp32, eagerly, one thing after
another); everything is off by default, so the default path is the reference path. The
algorithm files hold no switch: a component only declares what may be applied to it.

What a component may declare (all optional; a component without them runs as it is):

- ``networks() -> list[nn.Module]`` (agents): the network modules whose forward draws no random
  number. bf16 autocast wraps each of them (floating outputs come back float32) and
  ``compile_scope = "networks"`` compiles each in place. The agent's ``aux_losses`` are run
  under autocast whole, and their parameter-holding children compiled.
- ``compiled_phases``: names of methods that do an update's tensor work (dotted paths allowed),
  compiled whole under ``compile_scope = "update"`` (replays: under ``replay_compile``).
- ``acting_phases`` (agents): names of methods that act on observations, compiled under
  ``compile_scope = "update"`` for one-observation calls.
- ``rollback_state``: the names of a (get_state, set_state) pair that rolls the component back
  when compiled code fails mid-call (agents: ``checkpoint_state``/``load_checkpoint_state``).

Agents' ``update`` and ``act``, and replays' ``sample`` and ``update_priorities`` are then guarded
(:mod:`mlr_registry.execution.fallback`). A switch that cannot take effect (bf16 on a GPU
without bf16, compile where dynamo or its backend is missing) is turned off with a
``RuntimeWarning`` naming the reason, kept in :attr:`Execution.notes` and in the run's tags.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import gin
import torch

from mlr_registry.errors import ConfigError
from mlr_registry.execution import compilation
from mlr_registry.execution.attention import ATTENTIONS, choose_attention
from mlr_registry.execution.compilation import (
    COMPILE_MODES,
    COMPILE_SCOPES,
    Compiler,
    compile_targets,
    compile_unsupported_reason,
    resolve_attribute,
)
from mlr_registry.execution.fallback import Guard
from mlr_registry.execution.precision import autocast_forward, bf16_unsupported_reason

PRECISIONS = ("fp32", "bf16", "auto")
SWITCH_VALUES = "False, True or 'auto'"


def _switch(name: str, value: Any) -> bool | str:
    if not (value is True or value is False or value == "auto"):
        raise ConfigError(f"execution.{name} = {value!r}; expected {SWITCH_VALUES}")
    return value


@gin.configurable("execution")
class Execution:
    """How a run executes. Every setting is off by default (the reference's arithmetic).

    Args:
        precision: "fp32" (default); "bf16" = bf16 autocast around every network forward of the
            agent's update and acting, aux losses' included (float32 master weights, Adam state,
            losses; falls back to fp32 with a warning where bf16 is unsupported); "auto" = bf16
            on a bf16-capable CUDA device, else fp32 (no warning).
        compile: False (default); True = ``torch.compile`` (falls back to eager with a warning
            where unsupported); "auto" = on CUDA only (on a CPU inductor's first compilation
            takes longer than short runs gain).
        compile_mode: ``torch.compile``'s mode; "reduce-overhead" adds CUDA graphs (GPU only).
        compile_scope: "networks" (default: each network in place) or "update" (whole-update
            capture of the phases the agent declares, optimizer steps included where the lr is
            constant, and of acting on one observation).
        compile_backend: ``torch.compile``'s backend; None = "inductor".
        channels_last: False (default); True = the agent's conv weights (and so activations) in
            channels-last memory (the same values, no NCHW<->NHWC conversions around cuDNN's
            convolutions); "auto" = on CUDA only.
        cudnn_benchmark: False (default); True = cuDNN times its convolution algorithms on each
            new input shape and keeps the fastest (process-wide; the same function within float
            rounding); "auto" = on CUDA only.
        replay_compile: False (default); True / "auto" (on CUDA only) = compile the replay's
            declared phases (batch assembly, sum-tree descent and write-back): the same batches.
        overlap_env_step: the training env steps on a thread while the step's updates run (the
            same results; the trainer's docs say why).
        pipeline_updates: Atari: queue a step's updates on the device before the host reads that
            step's action (the same results; supersedes ``overlap_env_step``).
        attention: which kernel computes the attention of modules that declare ``attend``:
            "auto" (default: fused ``scaled_dot_product_attention`` up to head dim 256, the
            written-out softmax above), "sdpa" or "math" (:mod:`mlr_registry.execution.attention`).
    """

    def __init__(self, precision: str = "fp32", compile: bool | str = False,  # noqa: A002 - gin name
                 compile_mode: str = "default", compile_scope: str = "networks",
                 compile_backend: str | Callable[..., Any] | None = None, channels_last: bool | str = False,
                 cudnn_benchmark: bool | str = False, replay_compile: bool | str = False,
                 overlap_env_step: bool = False, pipeline_updates: bool = False, attention: str = "auto"):
        if precision not in PRECISIONS:
            raise ConfigError(f"execution.precision = {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if compile_mode not in COMPILE_MODES:
            raise ConfigError(f"execution.compile_mode = {compile_mode!r}; expected one of {', '.join(COMPILE_MODES)}")
        if attention not in ATTENTIONS:
            raise ConfigError(f"execution.attention = {attention!r}; expected one of {', '.join(ATTENTIONS)}")
        if compile_scope not in COMPILE_SCOPES:
            raise ConfigError(f"execution.compile_scope = {compile_scope!r}; expected one of "
                              f"{', '.join(COMPILE_SCOPES)}")
        self.precision_setting = precision
        self.compile_setting = _switch("compile", compile)
        self.channels_last_setting = _switch("channels_last", channels_last)
        self.cudnn_benchmark_setting = _switch("cudnn_benchmark", cudnn_benchmark)
        self.replay_compile_setting = _switch("replay_compile", replay_compile)
        self.compile_mode, self.compile_scope = compile_mode, compile_scope
        self.attention = attention
        self.compile_backend = compilation.DEFAULT_COMPILE_BACKEND if compile_backend is None else compile_backend
        self.overlap_env_step, self.pipeline_updates = bool(overlap_env_step), bool(pipeline_updates)
        self.notes: dict[str, str] = {}
        self.dtype: torch.dtype | None = None
        self.channels_last = self.cudnn_benchmark = False
        self.compiler = Compiler(self.compile_backend, compile_mode)
        self.replay_compiler = Compiler(self.compile_backend, "default")
        self.compile_enabled = self.replay_compile_enabled = False
        self.replay_phases: tuple[str, ...] = ()

    # --- what is in effect ----------------------------------------------------------------------

    @property
    def precision(self) -> str:
        """The precision in effect: "bf16" or "fp32"."""
        return "bf16" if self.dtype is torch.bfloat16 else "fp32"

    def _off(self, switch: str, message: str, warn: bool) -> None:
        self.notes[switch] = message
        if warn:
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def describe(self) -> dict[str, str]:
        """What is in effect and why, as strings (the run's ``fast_path.*`` tags): precision,
        compile, the replay's compile and the reason of each switch that was turned off."""
        info = {"precision": self.precision,
                "compile": (f"{self.compile_backend}/{self.compile_mode}/{self.compile_scope}"
                            if self.compile_enabled else "off")}
        if self.channels_last:
            info["memory_format"] = "channels_last"
        if self.cudnn_benchmark:
            info["cudnn_benchmark"] = "on"
        if self.attention != "auto":
            info["attention"] = self.attention
        if self.replay_phases:  # a replay that has something to compile
            info["replay_compile"] = f"{self.compile_backend}/default/update" if self.replay_compile_enabled else "off"
        info.update({f"{k}_note": v for k, v in self.notes.items()})
        return info

    # --- applying it ----------------------------------------------------------------------------

    def apply(self, agent: Any, replay: Any = None) -> None:
        """Apply the settings to ``agent`` (on ``agent.device``) and ``replay``; once per run, after
        both are built and before either is used."""
        device = torch.device(getattr(agent, "device", "cpu"))
        self._resolve_precision(device)
        self._resolve_kernels(device)
        self.compile_enabled = self._compile_allowed(self.compile_setting, "compile", device,
                                                     cuda_graphs=self.compile_mode == "reduce-overhead")
        if hasattr(agent, "modules"):
            choose_attention(agent.modules(), self.attention)
        networks = list(agent.networks()) if hasattr(agent, "networks") else []
        losses = list(getattr(agent, "aux_losses", []))
        if self.dtype is not None:
            for module in networks:
                autocast_forward(module, device.type, self.dtype)
            for loss in losses:  # whole: a loss computes its own distances in float32
                autocast_forward(loss, device.type, self.dtype, float_outputs=False)
        if self.channels_last:  # before anything is compiled or steps
            agent.to(memory_format=torch.channels_last)
        if self.compile_enabled:
            if self.compile_scope == "networks":
                self.compiler.compile_modules([*networks, *compile_targets(losses)])
            else:
                self.compiler.compile_phases(agent, getattr(agent, "compiled_phases", ()))
                self.compiler.compile_phases(agent, getattr(agent, "acting_phases", ()), single_only=True)
        self._guard(agent, self.compiler, "compile", stateful=("update",), stateless=("act",))
        if replay is not None:
            self.apply_replay(replay)

    def apply_replay(self, replay: Any) -> None:
        """Compile the replay's declared phases under ``replay_compile``."""
        device = torch.device(getattr(replay, "device", "cpu"))
        self.replay_phases = tuple(getattr(replay, "compiled_phases", ()))
        self.replay_compile_enabled = bool(self.replay_phases) and self._compile_allowed(
            self.replay_compile_setting, "replay_compile", device)
        if self.replay_compile_enabled:
            self.replay_compiler.compile_phases(replay, self.replay_phases)
        self._guard(replay, self.replay_compiler, "replay_compile", stateful=("sample", "update_priorities"))

    def _resolve_precision(self, device: torch.device) -> None:
        precision = self.precision_setting
        if precision == "fp32":
            return
        reason = bf16_unsupported_reason(device)
        if precision == "auto" and device.type != "cuda":
            reason = reason or f"'auto' uses bf16 on CUDA only (device {device})"
        if reason is None:
            self.dtype = torch.bfloat16
        else:
            self._off("precision", f"execution.precision = {precision!r} runs in fp32: {reason}",
                      warn=precision == "bf16")

    def _resolve_kernels(self, device: torch.device) -> None:
        """channels_last and cudnn_benchmark ('auto' = on CUDA only, where cuDNN's tensor-core
        convolutions want NHWC and otherwise convert NCHW tensors at every conv)."""
        setting = self.channels_last_setting
        self.channels_last = setting is True or (setting == "auto" and device.type == "cuda")
        if setting == "auto" and not self.channels_last:
            self._off("channels_last", "execution.channels_last = 'auto' keeps NCHW: channels-last is on "
                      f"for CUDA only (device {device})", warn=False)
        setting = self.cudnn_benchmark_setting
        self.cudnn_benchmark = setting is not False and device.type == "cuda"
        if setting is not False and not self.cudnn_benchmark:
            self._off("cudnn_benchmark", f"execution.cudnn_benchmark = {setting!r} is off: cuDNN "
                      f"autotuning needs a CUDA device (device {device})", warn=setting is True)
        if self.cudnn_benchmark:  # process-wide: set here, never unset by another run's False
            torch.backends.cudnn.benchmark = True

    def _compile_allowed(self, setting: bool | str, name: str, device: torch.device,
                         cuda_graphs: bool = False) -> bool:
        if setting is False:
            return False
        reason = compile_unsupported_reason(device, self.compile_backend)
        if setting == "auto" and device.type != "cuda":
            reason = reason or f"'auto' compiles on CUDA only (device {device})"
        if cuda_graphs and device.type != "cuda":
            reason = reason or "compile_mode 'reduce-overhead' (CUDA graphs) needs a CUDA device"
        if reason is None:
            return True
        self._off(name, f"execution.{name} = {setting!r} runs eagerly: {reason}", warn=setting is True)
        return False

    def _guard(self, component: Any, compiler: Compiler, name: str, stateful: tuple[str, ...],
               stateless: tuple[str, ...] = ()) -> None:
        """Guard the component's entry points (this instance only) when anything was compiled."""
        if not compiler.active:
            return
        pair = getattr(component, "rollback_state", None)
        rollback = tuple(getattr(*resolve_attribute(component, n)) for n in pair) if pair else None

        def failed(reason: str) -> None:
            setattr(self, f"{name}_enabled", False)  # compile_enabled / replay_compile_enabled
            self._off(name, f"execution.{name} turned off: {reason}", warn=True)

        guard = Guard(compiler, rollback, failed)
        for method, stateful_call in [(m, True) for m in stateful] + [(m, False) for m in stateless]:
            if hasattr(component, method):
                object.__setattr__(component, method, guard.wrap(getattr(component, method), stateful_call))
