"""The norm-constraint math, one tensor at a time: the readable statement of what LAWN does.

A constrained weight ``w`` lives on a sphere ``‖w‖ = r`` (per tensor), or on a product of spheres
``‖w_i‖ = r_i`` (per row: ``w_i`` is output unit / filter ``i``, all dims but dim 0). Three pieces:

* ``norms(w)``: ``‖w‖`` (a 0-d tensor) or ``(‖w_i‖)_i`` (shape ``(rows,)``), in fp32 (fp64 for fp64 weights).
* ``project_onto_tangent(g, w)``: ``g − (⟨g, w⟩ / ‖w‖²) · w``, so a step along it does not change
  ``‖w‖`` to first order.
* ``retract(w, target)``: ``w · (target / ‖w‖)``, which puts ``w`` back on its sphere.

All arithmetic is done in fp32 (fp64 for fp64 weights: ``compute_dtype``) and the result is cast back to the
input's dtype. ``norms`` is computed without overflow or underflow for any finite weight (in fp64 for
low-precision weights, rescaled by the largest entry for fp64 weights, as BLAS ``nrm2`` does).

Non-finite values: a projection coefficient or a retraction scale that is not finite (a NaN or inf in ``g`` or
``w``, a zero norm) is replaced by the value that leaves that tensor (or row) unchanged (0, 1), so a non-finite
entry stays where it is, as under the base optimizer alone, instead of spreading over the whole tensor.

The fast multi-tensor versions in :mod:`lawn.constraint.foreach` must agree with these
(``tests/test_constraint.py``). Rows are always dim 0 here; the engine passes a ``movedim`` view for weights
whose output units lie along another dim (``ConvTranspose*``, HF ``Conv1D``: :mod:`lawn.constraint.weights`).
"""

from __future__ import annotations

from typing import Literal

import torch

from lawn.constraint._dtensor import reduce_partial

Granularity = Literal["tensor", "row"]
GRANULARITIES: tuple[str, ...] = ("tensor", "row")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math and the targets use: fp64 for fp64 weights, fp32 for all others (fp32, bf16, fp16)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_granularity(granularity: object, w: torch.Tensor | None = None, what: str = "w") -> None:
    """``ValueError`` unless ``granularity`` is ``"tensor"`` or ``"row"`` (and ``w`` has >= 2 dims for ``"row"``)."""
    if not isinstance(granularity, str) or granularity not in GRANULARITIES:
        raise ValueError(f"granularity: expected one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "row" and w is not None and w.dim() < 2:
        raise ValueError(f"granularity='row': {what} has {w.dim()} dim(s); rows need >= 2 (use granularity='tensor')")


def _reduced_dims(x: torch.Tensor, granularity: Granularity) -> tuple[int, ...]:
    """The dims one norm covers: all of them per tensor, all but dim 0 per row.

    Reductions over a tuple of dims (rather than over a reshaped view) keep a sharded ``DTensor`` sharded.
    """
    return tuple(range(x.dim())) if granularity == "tensor" else tuple(range(1, x.dim()))


def norms(w: torch.Tensor, granularity: Granularity = "tensor") -> torch.Tensor:
    """``‖w‖₂`` in ``compute_dtype``: a 0-d tensor per tensor, shape ``(rows,)`` per row.

    Exact in range for every finite ``w`` (no overflow of the squares near 1e19, no underflow below 1e-19).
    For a sharded ``DTensor`` the norms are the global ones: replicated per tensor, sharded like dim 0 per row.
    """
    check_granularity(granularity, w)
    w = w.detach()
    dims = _reduced_dims(w, granularity)
    if w.dtype != torch.float64:  # fp64 squares hold any fp32 / bf16 / fp16 value without over- or underflow
        result = torch.linalg.vector_norm(w, dim=dims, dtype=torch.float64)
    else:  # nrm2-style: scale by the largest entry
        largest = reduce_partial(w.abs().amax(dim=dims, keepdim=True))
        scale = torch.where(largest > 0, largest, torch.ones_like(largest))
        result = (torch.linalg.vector_norm(w / scale, dim=dims, keepdim=True) * scale).squeeze(dims)
    return reduce_partial(result).to(compute_dtype(w.dtype))


def project_onto_tangent(g: torch.Tensor, w: torch.Tensor, granularity: Granularity = "tensor") -> torch.Tensor:
    """``g − (⟨g, w⟩ / ‖w‖²) · w`` (per row when ``granularity == "row"``), in ``g``'s dtype."""
    check_granularity(granularity, w)
    dtype = compute_dtype(w.dtype)
    g32, w32 = g.detach().to(dtype), w.detach().to(dtype)
    dims = _reduced_dims(w, granularity)
    coefficient = (g32 * w32).sum(dim=dims, keepdim=True) / (w32 * w32).sum(dim=dims, keepdim=True)
    coefficient = torch.where(torch.isfinite(coefficient), coefficient, torch.zeros_like(coefficient))
    return (g32 - coefficient * w32).to(g.dtype)


def retract(w: torch.Tensor, target: torch.Tensor, granularity: Granularity = "tensor") -> torch.Tensor:
    """``w · (target / ‖w‖)`` (per row when ``granularity == "row"``), in ``w``'s dtype."""
    check_granularity(granularity, w)
    dtype = compute_dtype(w.dtype)
    w32 = w.detach().to(dtype)
    norm = torch.linalg.vector_norm(w32, dim=_reduced_dims(w, granularity), keepdim=True)
    scale = target.to(dtype).reshape(norm.shape) / norm
    scale = torch.where(torch.isfinite(scale), scale, torch.ones_like(scale))
    return (w32 * scale).to(w.dtype)


def project_all_(grads: list[torch.Tensor], params: list[torch.Tensor], granularity: Granularity) -> None:
    """:func:`project_onto_tangent` for each pair, in place (the reference path over a list of tensors)."""
    for g, w in zip(grads, params):
        g.copy_(project_onto_tangent(g, w, granularity))


def retract_all_(params: list[torch.Tensor], targets: list[torch.Tensor], granularity: Granularity) -> None:
    """:func:`retract` for each weight, in place (the reference path over a list of tensors)."""
    for w, target in zip(params, targets):
        w.copy_(retract(w, target, granularity))
