"""The fused constrained step: projection, the base optimizer's update and retraction in one kernel (C++ on CPU,
Triton on CUDA).

For the bases users run most, LAWN takes over the whole step of the constrained tensors::

    g ← g − (⟨g, w⟩ / ‖w‖²) · w         (if project_gradient)
    w, state ← base update(w, g, state)  (torch.optim.Adam / AdamW / SGD math, on the base's own state)
    w ← w · (target / ‖w‖)              (if the step retracts)

in ``csrc/fused_step.cpp``: per row, one pass over each row's memory (the traffic of the base step alone);
per tensor, three passes (the dot before the update, the update, the rescale after it). Supported:

* ``torch.optim.Adam`` and ``torch.optim.AdamW`` (any ``foreach`` / ``fused`` flag: same math) with float
  hyper-parameters, ``weight_decay``, ``amsgrad``, ``maximize``; not ``differentiable``;
* ``torch.optim.SGD`` with ``momentum`` (0 too), ``dampening``, ``nesterov``, ``weight_decay``, ``maximize``;
  not ``differentiable``;
* CPU weights in fp32 or bf16 (contiguous or channels-last), with gradients and state of the same dtype and
  layout; the math is fp32 and each value is rounded once when stored (as torch's fused optimizers do);
* the same on CUDA weights, in the Triton kernels of :mod:`lawn.constraint.fused_step_triton` (no host
  synchronisation: Adam's ``step`` on the device is read by the kernels), where ``triton`` is installed (it is
  imported at the first CUDA step, never by ``import lawn``); without it, the unfused path as before.

The base's state stays in torch's own format (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``,
``momentum_buffer``, created as the base would create it), so a checkpoint loads into the unfused path or a
plain optimizer and back. Every other tensor (unconstrained, on another device or dtype, in an unsupported
group) goes through the base's own ``step()`` and LAWN's other paths, as before. Unlike the other paths, the
fused step leaves ``p.grad`` as it was (the projected gradient is never stored).

This module runs a kernel on plain data (the tensors, the base's state dicts and hyper-parameters, the targets);
which tensors it takes, and which kernel, is decided in :mod:`lawn.constraint.paths`.

The C++ kernel is built at first use, with :mod:`lawn.constraint.fused`'s in one extension (a C++ compiler and
``ninja``; about a minute, then cached by torch); if that fails, one warning, and the unfused path from then on
(for CPU tensors; likewise for CUDA tensors if importing the Triton module fails). Under ``torch.compile`` the
unfused path runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch

from lawn.constraint._lazy_kernel import LazyKernel, build_extension

_EMPTY = torch.empty(0)
#: the base's state tensors the kernels update, laid out like the weight
_STATE_KEYS = {"adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), "sgd": ("momentum_buffer",)}


class _Kernel(LazyKernel):
    """The extension, built once per process on first use; ``None`` after a failed build."""

    what = "the fused step kernel"
    instead = "the unfused path"

    @staticmethod
    def _build() -> ModuleType:
        return build()


class _Triton(LazyKernel):
    """:mod:`lawn.constraint.fused_step_triton` (CUDA), imported once on first use; ``None`` if that failed."""

    what = "the Triton fused step"
    instead = "the unfused path on CUDA"

    @staticmethod
    def _build() -> ModuleType:
        return importlib.import_module("lawn.constraint.fused_step_triton")


def build() -> ModuleType:
    """lawn's C++ extension (both kernels, one build: :func:`lawn.constraint._lazy_kernel.build_extension`)."""
    return build_extension()


def available() -> bool:
    """Whether the fused step kernel is built (building it now if needed) and usable in this process."""
    return _Kernel.get() is not None


def _step_dtype(fused: bool | None) -> torch.dtype:
    """The dtype of Adam's ``step`` tensor, as torch chooses it (float32; the default dtype if not fused)."""
    try:
        from torch.optim.optimizer import _get_scalar_dtype

        return _get_scalar_dtype(is_fused=fused)
    except ImportError:  # pragma: no cover - older or newer torch without the helper
        return torch.float32


def _adam_state(p: torch.Tensor, state: dict[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
    """Adam's state for ``p`` exactly as ``torch.optim.Adam`` creates it at its first step."""
    amsgrad = bool(group["amsgrad"])
    if "step" not in state:
        fused = group.get("fused")  # torch keeps `step` on the weight's device only if fused or capturable
        device = p.device if fused or group.get("capturable") else torch.device("cpu")
        state["step"] = torch.zeros((), dtype=_step_dtype(fused), device=device)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if amsgrad and "max_exp_avg_sq" not in state:
        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def step(
    kernel: ModuleType,
    kind: str,
    params: list[torch.Tensor],
    states: list[dict[str, Any]],
    hyper: Mapping[str, Any],
    targets: list[torch.Tensor] | None,
    *,
    project: bool,
    per_row: bool,
    decoupled: bool,
) -> None:
    """One fused step of ``params`` (each with its gradient ``p.grad``) in ``kernel`` (the C++ extension or the
    Triton module: the same ``adam_`` / ``sgd_``).

    ``kind``: ``"adam"`` or ``"sgd"``; ``states``: the base's state dict of each tensor (created here as the base
    would create it); ``hyper``: the base's hyper-parameters (its param group); ``targets``: the target norm(s) of
    each tensor, or ``None`` for a step without retraction; ``decoupled``: AdamW's weight decay.
    """
    weights = [p.detach() for p in params]
    grads = [p.grad for p in params]
    retract = targets is not None
    targets = targets if targets is not None else [_EMPTY] * len(params)
    if kind == "adam":
        amsgrad = bool(hyper["amsgrad"])
        states = [_adam_state(p, s, hyper) for p, s in zip(params, states)]
        beta1, beta2 = hyper["betas"]
        kernel.adam_(
            weights,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
            [s["step"] for s in states],
            targets,
            float(hyper["lr"]),
            float(beta1),
            float(beta2),
            float(hyper["eps"]),
            float(hyper["weight_decay"]),
            decoupled,
            amsgrad,
            bool(hyper["maximize"]),
            project,
            retract,
            per_row,
        )
        touched = [s[key] for s in states for key in _STATE_KEYS["adam"] if key in s]
    else:
        momentum = float(hyper["momentum"])
        first = [momentum != 0 and s.get("momentum_buffer") is None for s in states]
        for p, s, new in zip(params, states, first):
            if new:
                s["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format)
        buffers = [s["momentum_buffer"] for s in states] if momentum != 0 else [_EMPTY] * len(params)
        kernel.sgd_(
            weights,
            grads,
            buffers,
            first,
            targets,
            float(hyper["lr"]),
            momentum,
            float(hyper["dampening"]),
            float(hyper["weight_decay"]),
            bool(hyper["nesterov"]),
            bool(hyper["maximize"]),
            project,
            retract,
            per_row,
        )
        touched = buffers if momentum != 0 else []
    torch.autograd.graph.increment_version(weights + touched)
