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

The C++ kernel is built at first use, with :mod:`lawn.constraint.fused`'s in one extension (a C++ compiler and
``ninja``; about a minute, then cached by torch); if that fails, one warning, and the unfused path from then on
(for CPU tensors; likewise for CUDA tensors if importing the Triton module fails). Under ``torch.compile`` the
unfused path runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from lawn.constraint._dtensor import is_dtensor
from lawn.constraint._lazy_kernel import LazyKernel, build_extension

if TYPE_CHECKING:  # type hints only: the engine imports this module
    from lawn.constraint.engine import NormConstraint

_EMPTY = torch.empty(0)
_DTYPES = (torch.float32, torch.bfloat16)
_DENSE_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


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


@cache
def triton_installed() -> bool:
    """Whether ``triton`` can be imported (looked up, not imported)."""
    return importlib.util.find_spec("triton") is not None


def backend(w: torch.Tensor, cuda: bool = False) -> str | None:
    """Which kernel takes a weight on ``w``'s device: ``"cpu"`` (C++), ``"triton"`` (CUDA, only when asked for with
    ``cuda=True``, i.e. ``fused=True``, and where ``triton`` is installed), else ``None`` (the unfused path).

    CUDA weights default to the torch-native path until a hardware run meets the goals in
    docs/performance_gpu.md; the Triton step is opt-in until then."""
    kind = w.device.type
    if kind == "cpu":
        return "cpu"
    if kind == "cuda" and cuda and triton_installed():
        return "triton"
    return None


_KERNELS: dict[str, type[LazyKernel]] = {"cpu": _Kernel, "triton": _Triton}


def build() -> ModuleType:
    """lawn's C++ extension (both kernels, one build: :func:`lawn.constraint._lazy_kernel.build_extension`)."""
    return build_extension()


def available() -> bool:
    """Whether the fused step kernel is built (building it now if needed) and usable in this process."""
    return _Kernel.get() is not None


def base_kind(base: torch.optim.Optimizer) -> str | None:
    """``"adam"`` or ``"sgd"`` for the optimizers the kernel implements (exactly these classes), else ``None``."""
    kind = type(base)
    if kind in (torch.optim.Adam, torch.optim.AdamW):
        return "adam"
    if kind is torch.optim.SGD:
        return "sgd"
    return None


def _is_float(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _group_supported(kind: str, group: dict[str, Any]) -> bool:
    """The group's hyper-parameters are plain numbers and options the kernel implements."""
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


def _step_dtype(fused: bool | None) -> torch.dtype:
    """The dtype of Adam's ``step`` tensor, as torch chooses it (float32; the default dtype if not fused)."""
    try:
        from torch.optim.optimizer import _get_scalar_dtype

        return _get_scalar_dtype(is_fused=fused)
    except ImportError:  # pragma: no cover - older or newer torch without the helper
        return torch.float32


def _adam_state(p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
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


_STATE_KEYS = {"adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), "sgd": ("momentum_buffer",)}


class FusedStep:
    """LAWN's constrained step for one engine whose base the kernel implements (see the module docstring)."""

    def __init__(self, kind: str, cuda: bool = False) -> None:
        self.kind = kind
        self.cuda = cuda  # CUDA weights to the Triton kernels (fused=True); else they take the unfused path

    @classmethod
    def for_base(cls, base: torch.optim.Optimizer, cuda: bool = False) -> FusedStep | None:
        kind = base_kind(base)
        return None if kind is None else cls(kind, cuda)

    def step(self, engine: NormConstraint) -> bool:
        """Run the constrained step (the constrained phase): fused where the kernel takes a tensor, the engine's
        own paths for everything else. ``False`` (nothing done) if the kernel takes no tensor or is unavailable."""
        if torch.compiler.is_compiling():
            return False
        chosen: list[list[tuple[int, torch.Tensor, str]]] = []  # per group: (index, tensor, backend) taken
        for group, constrained in zip(engine.param_groups, engine._constrained):
            keys = _STATE_KEYS[self.kind]
            ok = _group_supported(self.kind, group)
            mine = [
                (
                    j,
                    p,
                    _takes(p, engine.state.get(p, {}), keys, self.cuda) if ok and p not in engine._row_dims else None,
                )
                for j, p in constrained
            ]
            chosen.append([(j, p, b) for j, p, b in mine if b is not None])
        if not any(chosen):
            return False
        kernels = {b: _KERNELS[b].get() for b in {b for mine in chosen for _, _, b in mine}}
        chosen = [[(j, p, b) for j, p, b in mine if kernels[b] is not None] for mine in chosen]
        if not any(chosen):
            return False
        taken = [[(j, p) for j, p, _ in mine] for mine in chosen]

        retract = engine._retracts_this_step()
        keys = engine._keys
        others = [
            [(j, p) for j, p in constrained if p.grad is not None and not any(p is q for _, q in mine)]
            for constrained, mine in zip(engine._constrained, taken)
        ]
        for group, rest in zip(engine.param_groups, others):
            if group[keys.project_gradient] and rest:
                engine._project(group, [p for _, p in rest])
        hidden = [(p, p.grad) for mine in taken for _, p in mine]
        for p, _ in hidden:
            p.grad = None  # the base's own step skips tensors without a gradient
        try:
            engine.base.step()
        finally:
            for p, g in hidden:
                p.grad = g
        for group, mine in zip(engine.param_groups, chosen):
            for b, kernel in kernels.items():
                ours = [(j, p) for j, p, where in mine if where == b]
                if ours:
                    self._run(kernel, engine, group, ours, retract)
        if retract:
            for group, rest in zip(engine.param_groups, others):
                if rest:
                    engine._retract(group, rest)
        return True

    def _run(
        self,
        kernel: ModuleType,
        engine: NormConstraint,
        group: dict[str, Any],
        constrained: list[tuple[int, torch.Tensor]],
        retract: bool,
    ) -> None:
        keys = engine._keys
        params = [p for _, p in constrained]
        project = bool(group[keys.project_gradient])
        per_row = group[keys.granularity] == "row"
        weights = [p.detach() for p in params]
        grads = [p.grad for p in params]
        norms = [_EMPTY] * len(params)  # ‖w‖ is computed by the kernel in the same pass, every step
        targets = [group[keys.targets][j] for j, _ in constrained] if retract else [_EMPTY] * len(params)
        if self.kind == "adam":
            amsgrad = bool(group["amsgrad"])
            states = [_adam_state(p, engine.state[p], group) for p in params]
            beta1, beta2 = group["betas"]
            kernel.adam_(
                weights,
                grads,
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
                [s["step"] for s in states],
                norms,
                targets,
                float(group["lr"]),
                float(beta1),
                float(beta2),
                float(group["eps"]),
                float(group["weight_decay"]),
                bool(group.get("decoupled_weight_decay", isinstance(engine.base, torch.optim.AdamW))),
                amsgrad,
                bool(group["maximize"]),
                project,
                retract,
                per_row,
            )
            touched = [s[key] for s in states for key in _STATE_KEYS["adam"] if key in s]
        else:
            momentum = float(group["momentum"])
            first = [momentum != 0 and engine.state[p].get("momentum_buffer") is None for p in params]
            if momentum != 0:
                for p, new in zip(params, first):
                    if new:
                        engine.state[p]["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format)
            buffers = [engine.state[p]["momentum_buffer"] if momentum != 0 else _EMPTY for p in params]
            kernel.sgd_(
                weights,
                grads,
                buffers,
                first,
                norms,
                targets,
                float(group["lr"]),
                momentum,
                float(group["dampening"]),
                float(group["weight_decay"]),
                bool(group["nesterov"]),
                bool(group["maximize"]),
                project,
                retract,
                per_row,
            )
            touched = buffers if momentum != 0 else []
        torch.autograd.graph.increment_version(weights + touched)
