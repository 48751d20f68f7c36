"""Optional fused CPU path (``fused=True``): the projection and the retraction in a hand-written C++ kernel.

Same formulas as :mod:`lawn.constraint` (``g ← g − (⟨g, w⟩ / ‖w‖²) · w``, ``w ← w · (target / ‖w‖)``), for
fp32 CPU tensors (contiguous or channels-last), in ``csrc/fused_constraint.cpp``:

* per row, one pass over each row: its sums are taken while the row streams through the cache and the update
  follows while it is still there, so the projection reads ``g`` and ``w`` once and writes ``g`` once (the
  least memory traffic the math allows); the foreach path needs a second pass;
* per tensor, the two passes the math needs (the reduction, then the update), without temporaries;
* sums in fp32 vector lanes over blocks of 4096 elements and in fp64 across blocks, in block order: accurate
  at any size and independent of the number of threads.

The kernel is compiled at first use by ``torch.utils.cpp_extension.load`` (a C++ compiler and ``ninja`` are
needed: ``pip install -e ".[fused]"`` from a clone; one extension with the fused step's kernel, about a minute
of CPU, then cached by torch under
``$TORCH_EXTENSIONS_DIR``, ``~/.cache/torch_extensions`` by default). If building fails, a warning is issued
once and the foreach path is used from then on. Tensors the kernel does not take (other devices or dtypes,
other layouts, a gradient laid out unlike its weight, ``DTensor``) and calls inside ``torch.compile`` go to the
foreach path.
"""

from __future__ import annotations

from types import ModuleType

import torch

from lawn.constraint._dtensor import is_dtensor
from lawn.constraint._lazy_kernel import LazyKernel, build_extension
from lawn.constraint.foreach import foreach_project_onto_tangent_, foreach_retract_
from lawn.constraint.reference import Granularity


class _Kernel(LazyKernel):
    """The extension, built once per process on first use; ``None`` after a failed build."""

    what = "the fused kernel"
    instead = "the foreach path"

    @staticmethod
    def _build() -> ModuleType:
        return build()


def build() -> ModuleType:
    """lawn's C++ extension (both kernels, one build: :func:`lawn.constraint._lazy_kernel.build_extension`)."""
    return build_extension()


def available() -> bool:
    """Whether the fused kernel is built (building it now if needed) and usable in this process."""
    return _Kernel.get() is not None


_DENSE_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}  # besides contiguous; both keep dim 0 outermost


def _takes(t: torch.Tensor, like: torch.Tensor | None = None) -> bool:
    """A CPU fp32 tensor, contiguous or channels-last (and laid out like ``like``, if given)."""
    if t.device.type != "cpu" or t.dtype != torch.float32 or is_dtensor(t):
        return False
    if like is not None and (t.shape != like.shape or t.stride() != like.stride()):
        return False
    last = _DENSE_FORMATS.get(t.dim())
    return t.is_contiguous() or (last is not None and t.is_contiguous(memory_format=last))


def _split(*lists: list, keep: list[bool]) -> tuple[tuple[list, ...], tuple[list, ...]]:
    """Each list split into (entries where ``keep``, the others)."""
    kept = tuple([x for x, k in zip(xs, keep) if k] for xs in lists)
    rest = tuple([x for x, k in zip(xs, keep) if not k] for xs in lists)
    return kept, rest


def _kernel_for(taken: list[bool]) -> ModuleType | None:
    """The kernel, if some tensor would go through it (only then is it built) and we are not being compiled."""
    if not any(taken) or torch.compiler.is_compiling():
        return None
    return _Kernel.get()


def fused_project_onto_tangent_(
    grads: list[torch.Tensor],
    params: list[torch.Tensor],
    granularity: Granularity,
) -> None:
    """In place: ``g ← g − (⟨g, w⟩ / ‖w‖²) · w`` for each pair."""
    params = [w.detach() for w in params]
    taken = [_takes(w) and _takes(g, like=w) for g, w in zip(grads, params)]
    kernel = _kernel_for(taken)
    keep = [kernel is not None and k for k in taken]
    (g_in, w_in), (g_out, w_out) = _split(grads, params, keep=keep)
    if g_in:
        kernel.project_(g_in, w_in, granularity == "row")
        torch.autograd.graph.increment_version(g_in)
    if g_out:
        foreach_project_onto_tangent_(g_out, w_out, granularity)


def fused_retract_(params: list[torch.Tensor], targets: list[torch.Tensor], granularity: Granularity) -> None:
    """In place: ``w ← w · (target / ‖w‖)`` for each pair."""
    params = [w.detach() for w in params]
    taken = [_takes(w) and _takes(t) for w, t in zip(params, targets)]
    kernel = _kernel_for(taken)
    keep = [kernel is not None and k for k in taken]
    (w_in, t_in), (w_out, t_out) = _split(params, targets, keep=keep)
    if w_in:
        kernel.retract_(w_in, t_in, granularity == "row")
        torch.autograd.graph.increment_version(w_in)
    if w_out:
        foreach_retract_(w_out, t_out, granularity)
