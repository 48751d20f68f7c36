"""Which code runs a constrained step: the one place that picks the execution path.

A constrained step is, for each constrained weight ``w`` with gradient ``g``::

    g ← g − (⟨g, w⟩ / ‖w‖²) · w     (projection, if project_gradient)
    base.step()
    w ← w · (target / ‖w‖)          (retraction, if the step retracts)

Six paths run it; all compute what :mod:`lawn.constraint.reference` states (``tests/test_constraint_paths.py``
runs each against it, step by step, for every option):

=====================  ==========================================================  ============================
path                   what runs                                                   taken when
=====================  ==========================================================  ============================
Triton fused step      projection + Adam/AdamW/SGD update + retraction in one      ``fused=True``; CUDA fp32/bf16
                       kernel set (:mod:`~lawn.constraint.fused_step_triton`)      dense weights, supported base
C++ fused step         the same on CPU (``csrc/fused_step.cpp``)                   ``fused`` not ``False``; CPU
                                                                                   fp32/bf16 dense, supported base
compiled               projection and retraction by ``torch.compile``              ``compiled=True``
                       (:mod:`~lawn.constraint.compiled`)
C++ projection /       projection and retraction in C++ around the base's own      ``fused=True``, the weights no
retraction kernel      step (:mod:`~lawn.constraint.fused`; fp32 CPU dense only,   fused step takes
                       the rest through foreach)
foreach                multi-tensor PyTorch ops (:mod:`~lawn.constraint.foreach`)  the default
reference              one tensor at a time (:mod:`~lawn.constraint.reference`)    ``foreach=False``
=====================  ==========================================================  ============================

A "supported base" is exactly ``torch.optim.Adam``, ``AdamW`` or ``SGD`` with plain-number hyper-parameters and not
``differentiable``. A fused step takes a weight only if its gradient and existing state share its dtype and layout
(and, per row, its rows lie along dim 0); every weight it does not take goes through the base's own ``step()``
between the unfused projection and retraction. CUDA weights take the Triton step only with ``fused=True`` (opt-in
until a GPU run meets the goals in docs/performance_gpu.md). Under ``torch.compile`` no fused step runs.

:class:`Paths` is built once per constraint from its options and base; the engine asks :meth:`Paths.plan` once per
step group which tensors each fused step takes. To add a path, add it here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

import torch

from lawn._checks import is_number
from lawn.constraint import fused_step, reference
from lawn.constraint._dtensor import is_dtensor
from lawn.constraint._lazy_kernel import LazyKernel
from lawn.constraint.compiled import compiled_project_onto_tangent_, compiled_retract_
from lawn.constraint.foreach import foreach_project_onto_tangent_, foreach_retract_
from lawn.constraint.fused import fused_project_onto_tangent_, fused_retract_
from lawn.constraint.options import Options
from lawn.constraint.reference import Granularity
from lawn.constraint.weights import Entry

Project = Callable[[list[torch.Tensor], list[torch.Tensor], Granularity], None]
Retract = Callable[[list[torch.Tensor], list[torch.Tensor], Granularity], None]


# ----------------------------------------------------------------------------- the unfused projection / retraction


#: name → (projection, retraction), in place on lists of tensors (rows along dim 0)
UNFUSED: dict[str, tuple[Project, Retract]] = {
    "reference": (reference.project_all_, reference.retract_all_),
    "foreach": (foreach_project_onto_tangent_, foreach_retract_),
    "compiled": (compiled_project_onto_tangent_, compiled_retract_),
    "kernel": (fused_project_onto_tangent_, fused_retract_),
}


def unfused_path(options: Options) -> str:
    """The projection / retraction path the options ask for."""
    if options.compiled:
        return "compiled"
    if options.fused:
        return "kernel"
    return "reference" if options.foreach is False else "foreach"


# ----------------------------------------------------------------------------- the fused steps
_DTYPES = (torch.float32, torch.bfloat16)
_DENSE_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}
#: backend → its kernel, loaded lazily (``None`` after a failed build or import)
KERNELS: dict[str, type[LazyKernel]] = {"cpu": fused_step._Kernel, "triton": fused_step._Triton}


@cache
def triton_installed() -> bool:
    """Whether ``triton`` can be imported (looked up, not imported)."""
    return importlib.util.find_spec("triton") is not None


def backend(w: torch.Tensor, cuda: bool = False) -> str | None:
    """Which kernel takes a weight on ``w``'s device: ``"cpu"`` (C++), ``"triton"`` (CUDA, only when asked for with
    ``cuda=True``, i.e. ``fused=True``, and where ``triton`` is installed), else ``None`` (the unfused path)."""
    kind = w.device.type
    if kind == "cpu":
        return "cpu"
    if kind == "cuda" and cuda and triton_installed():
        return "triton"
    return None


def base_kind(base: torch.optim.Optimizer) -> str | None:
    """``"adam"`` or ``"sgd"`` for the optimizers the fused steps implement (exactly these classes), else ``None``."""
    kind = type(base)
    if kind in (torch.optim.Adam, torch.optim.AdamW):
        return "adam"
    if kind is torch.optim.SGD:
        return "sgd"
    return None


def _is_float(*values: Any) -> bool:
    return all(is_number(v) for v in values)


def _group_supported(kind: str, group: dict[str, Any]) -> bool:
    """The group's hyper-parameters are plain numbers and options the kernels implement."""
    if group.get("differentiable", False):
        return False
    if kind == "adam":
        betas = group["betas"]
        return _is_float(group["lr"], betas[0], betas[1], group["eps"], group["weight_decay"])
    return _is_float(group["lr"], group["momentum"], group["dampening"], group["weight_decay"])


def _dense(t: torch.Tensor) -> bool:
    last = _DENSE_FORMATS.get(t.dim())
    return t.is_contiguous() or (last is not None and t.is_contiguous(memory_format=last))


def _like(t: Any, w: torch.Tensor) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == w.dtype and t.device == w.device and t.stride() == w.stride()


def _takes(p: torch.Tensor, state: dict[str, Any], keys: tuple[str, ...], cuda: bool) -> str | None:
    """The backend (:func:`backend`) that takes ``p``: an fp32/bf16 dense weight on a device a kernel serves, whose
    gradient and existing state tensors share its dtype and layout; ``None`` if no kernel takes it."""
    g = p.grad
    if g is None:
        return None
    w = p.detach()  # attribute reads on a plain tensor skip nn.Parameter's __torch_function__ (~1 µs each)
    where = backend(w, cuda)
    if where is None or w.dtype not in _DTYPES or is_dtensor(p) or not _dense(w):
        return None
    if g.is_sparse or not _like(g, w) or g.shape != w.shape:
        return None
    step = state.get("step")
    if step is not None and not (
        isinstance(step, torch.Tensor) and step.numel() == 1 and (step.device.type == "cpu" or step.device == w.device)
    ):  # torch keeps it on the CPU, or (fused / capturable) on the weight's device
        return None
    return where if all(_like(state[key], w) for key in keys if state.get(key) is not None) else None


@dataclass
class FusedRun:
    """Tensors of one group that one fused-step kernel takes this step."""

    kernel: ModuleType
    kind: str  # "adam" or "sgd"
    entries: list[Entry]
    decoupled: bool  # AdamW's weight decay


@dataclass
class GroupPlan:
    """One step group's plan: the fused runs, and the rest (tensors with a gradient on the unfused path)."""

    fused: list[FusedRun] = field(default_factory=list)
    rest: list[Entry] = field(default_factory=list)


class Paths:
    """The paths of one constraint, chosen from its options and base (see the module docstring)."""

    def __init__(self, base: torch.optim.Optimizer, options: Options) -> None:
        self.unfused = unfused_path(options)
        self.project, self.retract = UNFUSED[self.unfused]
        fusable = options.fused is not False and not options.compiled and options.foreach is not False
        self.step_kind = base_kind(base) if fusable else None  # None: no fused step
        self.cuda = options.fused is True  # CUDA weights to the Triton step (else the unfused path)
        self.adamw = isinstance(base, torch.optim.AdamW)

    def fuses_steps(self) -> bool:
        """Whether a fused step may run now (a supported base, not inside ``torch.compile``)."""
        return self.step_kind is not None and not torch.compiler.is_compiling()

    def plan(self, group: dict[str, Any], entries: list[Entry], state: dict, granularity: Granularity) -> GroupPlan:
        """Which of the group's constrained tensors (those with a gradient) each fused-step kernel takes, and the
        rest. A kernel is loaded (built) only when a tensor would go through it."""
        kind = self.step_kind
        ok = kind is not None and _group_supported(kind, group)
        keys = fused_step._STATE_KEYS[kind] if kind is not None else ()
        chosen: dict[str, list[Entry]] = {}
        plan = GroupPlan()
        for entry in entries:
            p = entry.tensor
            if p.grad is None:
                continue
            where = None
            if ok and (granularity == "tensor" or entry.row_dim == 0):
                where = _takes(p, state.get(p, {}), keys, self.cuda)
            if where is not None:
                chosen.setdefault(where, []).append(entry)
            else:
                plan.rest.append(entry)
        decoupled = bool(group.get("decoupled_weight_decay", self.adamw))
        for where, taken in chosen.items():
            kernel = KERNELS[where].get()
            if kernel is not None:
                plan.fused.append(FusedRun(kernel, kind, taken, decoupled))  # type: ignore[arg-type]
            else:  # the kernel failed to build or import (one warning): its tensors take the unfused path
                plan.rest = [e for e in entries if e in plan.rest or e in taken]
        return plan
