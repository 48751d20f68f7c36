"""The norm-constraint math, one tensor at a time: the readable statement of what LAWN does.

A constrained weight ``w`` lives on a sphere ``‖w‖ = r`` (per tensor), or on a product of spheres
``‖w_i‖ = r_i`` (per row: ``w_i`` is output unit / filter ``i``, all dims but dim 0). Three pieces:

* ``norms(w)``: ``‖w‖`` (a 0-d tensor) or ``(‖w_i‖)_i`` (shape ``(rows,)``), in fp32 (fp64 for fp64 weights).
* ``project_onto_tangent(g, w)``: ``g − (⟨g, w⟩ / ‖w‖²) · w``, so a step along it does not change
  ``‖w‖`` to first order.
* ``retract(w, target)``: ``w · (target / ‖w‖)``, which puts ``w`` back on its sphere.

All arithmetic is done in fp32 (fp64 for fp64 weights: ``compute_dtype``) and the result is cast back to the
input's dtype. The fast multi-tensor
versions in :mod:`lawn.constraint.foreach` must agree with these (``tests/test_constraint.py``).
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


def _reduced_dims(x: torch.Tensor, granularity: Granularity) -> tuple[int, ...]:
    """The dims one norm covers: all of them per tensor, all but dim 0 per row.

    Reductions over a tuple of dims (rather than over a reshaped view) keep a sharded ``DTensor`` sharded.
    """
    return tuple(range(x.dim())) if granularity == "tensor" else tuple(range(1, x.dim()))


def norms(w: torch.Tensor, granularity: Granularity = "tensor") -> torch.Tensor:
    """``‖w‖₂`` in ``compute_dtype``: a 0-d tensor per tensor, shape ``(rows,)`` per row.

    For a sharded ``DTensor`` the norms are the global ones: replicated per tensor, sharded like dim 0 per row.
    """
    w = w.detach()
    return reduce_partial(torch.linalg.vector_norm(w, dim=_reduced_dims(w, granularity), dtype=compute_dtype(w.dtype)))


def project_onto_tangent(g: torch.Tensor, w: torch.Tensor, granularity: Granularity = "tensor") -> torch.Tensor:
    """``g − (⟨g, w⟩ / ‖w‖²) · w`` (per row when ``granularity == "row"``), in ``g``'s dtype."""
    dtype = compute_dtype(w.dtype)
    g32, w32 = g.detach().to(dtype), w.detach().to(dtype)
    dims = _reduced_dims(w, granularity)
    coefficient = (g32 * w32).sum(dim=dims, keepdim=True) / (w32 * w32).sum(dim=dims, keepdim=True)
    return (g32 - coefficient * w32).to(g.dtype)


def retract(w: torch.Tensor, target: torch.Tensor, granularity: Granularity = "tensor") -> torch.Tensor:
    """``w · (target / ‖w‖)`` (per row when ``granularity == "row"``), in ``w``'s dtype."""
    dtype = compute_dtype(w.dtype)
    w32 = w.detach().to(dtype)
    norm = torch.linalg.vector_norm(w32, dim=_reduced_dims(w, granularity), keepdim=True)
    return (w32 * (target.to(dtype).reshape(norm.shape) / norm)).to(w.dtype)
