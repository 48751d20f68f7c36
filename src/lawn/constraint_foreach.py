"""The norm-constraint math on lists of tensors, in place: the fast path behind :mod:`lawn.constraint`.

Same formulas as the reference (fp32 accumulation, results in the tensors' own dtype), but batched with
``torch._foreach_*`` kernels where PyTorch has them and without a host synchronisation (no ``.item()``):

* projection: ``g ← g − (⟨g, w⟩ / ‖w‖²) · w``
* retraction: ``w ← w · (target / ‖w‖)``

All tensors of one call share a device; callers group by device (see :class:`lawn.NormConstraint`).
"""

from __future__ import annotations

import torch

from lawn._dtensor import is_dtensor
from lawn.constraint import Granularity


def foreach_norms(tensors: list[torch.Tensor], granularity: Granularity) -> list[torch.Tensor]:
    """fp32 norms of each tensor: 0-d per tensor, ``(rows,)`` per row."""
    if granularity == "tensor":
        return list(torch._foreach_norm(tensors, 2.0, dtype=torch.float32))
    return [torch.linalg.vector_norm(t.detach(), dim=_row_dims(t), dtype=torch.float32) for t in tensors]


def _row_dims(t: torch.Tensor) -> tuple[int, ...]:
    """All dims but dim 0: reducing over them (not over a ``flatten(1)`` view) keeps a ``DTensor``'s shards."""
    return tuple(range(1, t.dim()))


def _dot(g: torch.Tensor, w: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """fp32 ``⟨g, w⟩`` per tensor (0-d) or per row (``(rows,)``)."""
    if is_dtensor(g):  # a sharded dim cannot always be flattened: reduce over dims (the result is partial)
        dims = tuple(range(g.dim())) if granularity == "tensor" else _row_dims(g)
        return (g.float() * w.detach().float()).sum(dim=dims)
    if granularity == "tensor":
        if g.dtype == torch.float32:
            return torch.dot(g.reshape(-1), w.detach().reshape(-1))
        return torch.dot(g.reshape(-1).float(), w.detach().reshape(-1).float())
    return torch.linalg.vecdot(g.flatten(1).float(), w.detach().flatten(1).float())


def _broadcastable(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Row coefficients shaped ``(rows, 1, 1, ...)`` to broadcast over ``like``."""
    return coefficient.reshape((-1,) + (1,) * (like.dim() - 1)) if coefficient.dim() else coefficient


def foreach_project_onto_tangent_(
    grads: list[torch.Tensor], params: list[torch.Tensor], granularity: Granularity
) -> None:
    """In place: ``g ← g − (⟨g, w⟩ / ‖w‖²) · w`` for each pair."""
    if not grads:
        return
    squared_norms = torch._foreach_mul(*(2 * [foreach_norms(params, granularity)]))
    dots = [_dot(g, w, granularity) for g, w in zip(grads, params)]
    coefficients = torch._foreach_div(dots, squared_norms)
    if granularity == "tensor":
        torch._foreach_addcmul_(grads, [w.detach() for w in params], coefficients, value=-1.0)
    else:
        for g, w, c in zip(grads, params, coefficients):
            g.addcmul_(w.detach(), _broadcastable(c, w).to(g.dtype), value=-1.0)


def foreach_retract_(params: list[torch.Tensor], targets: list[torch.Tensor], granularity: Granularity) -> None:
    """In place: ``w ← w · (target / ‖w‖)`` for each pair."""
    if not params:
        return
    scales = torch._foreach_div(targets, foreach_norms(params, granularity))
    if granularity == "tensor":
        torch._foreach_mul_([w.detach() for w in params], scales)
    else:
        for w, s in zip(params, scales):
            w.detach().mul_(_broadcastable(s, w))
