"""The norm-constraint math, one tensor at a time: the readable statement of what LAWN does.

A constrained weight ``w`` lives on a sphere ``‖w‖ = r`` (per tensor), or on a product of spheres
``‖w_i‖ = r_i`` (per row: ``w_i`` is output unit / filter ``i``, all dims but dim 0). Three pieces:

* ``norms(w)``: ``‖w‖`` (a 0-d tensor) or ``(‖w_i‖)_i`` (shape ``(rows,)``), always in fp32.
* ``project_onto_tangent(g, w)``: ``g − (⟨g, w⟩ / ‖w‖²) · w``, so a step along it does not change
  ``‖w‖`` to first order.
* ``retract(w, target)``: ``w · (target / ‖w‖)``, which puts ``w`` back on its sphere.

All arithmetic is done in fp32 and the result is cast back to the input's dtype. The fast multi-tensor
versions in :mod:`lawn.constraint_foreach` must agree with these (``tests/test_constraint.py``).
"""

from __future__ import annotations

from typing import Literal

import torch

Granularity = Literal["tensor", "row"]
GRANULARITIES: tuple[str, ...] = ("tensor", "row")


def _rows(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``x`` in fp32, viewed as ``(1, n)`` per tensor or ``(rows, n)`` per row."""
    x = x.detach().float()
    return x.reshape(1, -1) if granularity == "tensor" else x.reshape(x.shape[0], -1)


def _shape_of_norms(w: torch.Tensor, granularity: Granularity) -> tuple[int, ...]:
    return () if granularity == "tensor" else (w.shape[0],)


def norms(w: torch.Tensor, granularity: Granularity = "tensor") -> torch.Tensor:
    """``‖w‖₂`` in fp32: a 0-d tensor per tensor, shape ``(rows,)`` per row."""
    out = torch.linalg.vector_norm(_rows(w, granularity), dim=1)
    return out.reshape(_shape_of_norms(w, granularity))


def project_onto_tangent(g: torch.Tensor, w: torch.Tensor, granularity: Granularity = "tensor") -> torch.Tensor:
    """``g − (⟨g, w⟩ / ‖w‖²) · w`` (per row when ``granularity == "row"``), in ``g``'s dtype."""
    g32, w32 = _rows(g, granularity), _rows(w, granularity)
    coefficient = (g32 * w32).sum(dim=1, keepdim=True) / (w32 * w32).sum(dim=1, keepdim=True)
    return (g32 - coefficient * w32).reshape(g.shape).to(g.dtype)


def retract(w: torch.Tensor, target: torch.Tensor, granularity: Granularity = "tensor") -> torch.Tensor:
    """``w · (target / ‖w‖)`` (per row when ``granularity == "row"``), in ``w``'s dtype."""
    w32 = _rows(w, granularity)
    scale = target.float().reshape(-1, 1) / torch.linalg.vector_norm(w32, dim=1, keepdim=True)
    return (w32 * scale).reshape(w.shape).to(w.dtype)
