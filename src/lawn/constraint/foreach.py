"""The norm-constraint math on lists of tensors, in place: the fast path behind :mod:`lawn.constraint`.

Same formulas as the reference (fp32 accumulation, fp64 for fp64 tensors; results in the tensors' own dtype),
without a host synchronisation (no ``.item()``) and without temporaries the size of a weight (fp32 weights):

* projection: ``g ← g − (⟨g, w⟩ / ‖w‖²) · w``
* retraction: ``w ← w · (target / ‖w‖)``

Two loop orders, chosen by device. On CPU, PyTorch's ``_foreach_*`` kernels are loops over the tensors
anyway, so we go tensor by tensor and do a tensor's passes back to back (``⟨g, w⟩`` then the update;
``‖w‖`` then the rescale): the later pass can find the tensor still in cache. Elsewhere (CUDA) the small
per-tensor scalar arithmetic is batched with ``_foreach_*`` kernels to save launches.

A coefficient or scale that is not finite (a NaN or inf in ``g`` or ``w``, a zero norm) leaves its tensor (or row)
unchanged (coefficient 0, scale 1), as in the reference: non-finite entries do not spread (``_finite_or``).

All tensors of one call share a device; callers group by device (see :class:`lawn.NormConstraint`).
"""

from __future__ import annotations

import torch

from lawn.constraint._dtensor import is_dtensor
from lawn.constraint.reference import Granularity, compute_dtype

_BLOCK = 1 << 18  # elements per block of rows in a low-precision or per-row dot (1 MB of fp32 products)


def foreach_norms(tensors: list[torch.Tensor], granularity: Granularity) -> list[torch.Tensor]:
    """Norms (in ``compute_dtype``) of each tensor: 0-d per tensor, ``(rows,)`` per row."""
    if granularity == "tensor" and all(t.dtype != torch.float64 for t in tensors):
        return list(torch._foreach_norm(tensors, 2.0, dtype=torch.float32))
    return [_norm(t.detach(), granularity) for t in tensors]


def _row_dims(t: torch.Tensor) -> tuple[int, ...]:
    """All dims but dim 0: reducing over them (not over a ``flatten(1)`` view) keeps a ``DTensor``'s shards."""
    return tuple(range(1, t.dim()))


def _dot(g: torch.Tensor, w: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``⟨g, w⟩`` in ``compute_dtype`` per tensor (0-d) or per row (``(rows,)``), without a temporary the size
    of ``w``.

    fp32 or fp64 per tensor: one BLAS dot. Otherwise the products are summed over blocks of rows of at most
    ``_BLOCK`` elements, so the temporary stays small (and in cache) whatever the size of ``w``.
    """
    dtype = compute_dtype(w.dtype)
    if is_dtensor(g):  # a sharded dim cannot always be flattened: reduce over dims (the result is partial)
        dims = tuple(range(g.dim())) if granularity == "tensor" else _row_dims(g)
        return (g.to(dtype) * w.detach().to(dtype)).sum(dim=dims)
    w = w.detach()
    if granularity == "tensor" and g.dtype == dtype == w.dtype:
        return torch.dot(g.reshape(-1), w.reshape(-1))
    if w.dim() == 0:
        return g.to(dtype) * w.to(dtype)
    rows_per_block = max(1, _BLOCK // max(1, w[0].numel()))
    blocks = zip(g.split(rows_per_block), w.split(rows_per_block))
    if granularity == "tensor":
        return torch.stack([(gb.to(dtype) * wb.to(dtype)).sum() for gb, wb in blocks]).sum()
    parts = [(gb.to(dtype) * wb.to(dtype)).sum(_row_dims(w)) for gb, wb in blocks]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _broadcastable(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Row coefficients shaped ``(rows, 1, 1, ...)`` to broadcast over ``like``."""
    return coefficient.reshape((-1,) + (1,) * (like.dim() - 1)) if coefficient.dim() else coefficient


def _norm(w: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``‖w‖`` (0-d) or row norms (``(rows,)``) of one tensor, in ``compute_dtype``."""
    dims = None if granularity == "tensor" else _row_dims(w)
    return torch.linalg.vector_norm(w, dim=dims, dtype=compute_dtype(w.dtype))


def _finite_or(x: torch.Tensor, fallback: float) -> torch.Tensor:
    """``x`` with every NaN / inf replaced by ``fallback`` (one kernel, no host synchronisation)."""
    return torch.nan_to_num(x, nan=fallback, posinf=fallback, neginf=fallback)


def _tensor_by_tensor(tensors: list[torch.Tensor]) -> bool:
    return tensors[0].device.type == "cpu"


def foreach_project_onto_tangent_(
    grads: list[torch.Tensor],
    params: list[torch.Tensor],
    granularity: Granularity,
    *,
    tensor_by_tensor: bool | None = None,
) -> None:
    """In place: ``g ← g − (⟨g, w⟩ / ‖w‖²) · w`` for each pair (‖w‖ computed here, every time).

    ``tensor_by_tensor``: the loop order (see the module docstring); ``None`` picks it by device.
    """
    if not grads:
        return
    if tensor_by_tensor is None:
        tensor_by_tensor = _tensor_by_tensor(params)
    if tensor_by_tensor:
        for g, w in zip(grads, params):
            w = w.detach()
            squared_norm = _norm(w, granularity).square()  # a DTensor norm is partial
            coefficient = _finite_or(_dot(g, w, granularity) / squared_norm, 0.0)  # out of place: may be partial
            g.addcmul_(w, _broadcastable(coefficient, w), value=-1.0)
        return
    known = foreach_norms(params, granularity)
    squared_norms = torch._foreach_mul(known, known)
    coefficients = torch._foreach_div([_dot(g, w, granularity) for g, w in zip(grads, params)], squared_norms)
    for g, w, c in zip(grads, params, coefficients):
        g.addcmul_(w.detach(), _broadcastable(_finite_or(c, 0.0), w), value=-1.0)


def foreach_retract_(
    params: list[torch.Tensor],
    targets: list[torch.Tensor],
    granularity: Granularity,
    *,
    tensor_by_tensor: bool | None = None,
) -> None:
    """In place: ``w ← w · (target / ‖w‖)`` for each pair.

    ``tensor_by_tensor``: the loop order (see the module docstring); ``None`` picks it by device.
    """
    if not params:
        return
    if tensor_by_tensor is None:
        tensor_by_tensor = _tensor_by_tensor(params)
    if tensor_by_tensor:
        for w, target in zip(params, targets):
            w = w.detach()
            w.mul_(_broadcastable(_finite_or(target / _norm(w, granularity), 1.0), w))
        return
    scales = torch._foreach_div(targets, foreach_norms(params, granularity))
    for w, s in zip(params, scales):
        w.detach().mul_(_broadcastable(_finite_or(s, 1.0), w))
