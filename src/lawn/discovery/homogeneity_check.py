"""``lawn.check_homogeneity``: a numeric confirmation of what discovery found, independent of the graph walk.

Scale the chosen weights ``W`` together by ``α > 0`` and compare outputs. A positively homogeneous tail of
depth ``k`` without biases gives exactly ``f(αW) = α^k f(W)``. We fit ``k`` by least squares on
``log(‖f(αW)‖ / ‖f(W)‖) = k log α`` over several ``α`` and report the relative error of the nearest integer::

    relative_error = max_α ‖f(αW) − α^k f(W)‖ / ‖α^k f(W)‖

It is ~1e-7 (float32 rounding) for a bias-free tail. Biases make the tail affine, and residual paths of
different depths make it a sum of several powers of ``α``; then the error is large and the fitted degree is
not an integer: the report says so (``homogeneous`` is ``False``) instead of rounding it away. Each forward
pass runs under ``torch.no_grad()`` with the same RNG seed (identical dropout masks), in the model's current
mode; weights, buffers and RNG states are restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lawn.discovery._forward import ExampleInputs, call, check_model, output_tensors, untouched


@dataclass(frozen=True)
class HomogeneityReport:
    """Outcome of :func:`check_homogeneity`; ``str(report)`` is a one-line summary."""

    degree: int  # the integer k nearest to fitted_degree
    fitted_degree: float  # least-squares k over the alphas
    relative_error: float  # max over alphas of ‖f(αW) − α^degree f(W)‖ / ‖α^degree f(W)‖
    alphas: tuple[float, ...]
    tolerance: float

    @property
    def homogeneous(self) -> bool:
        """``f(αW) = α^degree f(W)`` within ``tolerance`` for every tested ``α``."""
        return self.relative_error <= self.tolerance

    def __str__(self) -> str:
        if self.homogeneous:
            return (
                f"homogeneous of degree {self.degree}: f(αW) = α^{self.degree} f(W) within "
                f"{self.relative_error:.1e} (α in {list(self.alphas)})"
            )
        return (
            f"not exactly homogeneous: fitted degree {self.fitted_degree:.3f}, relative error "
            f"{self.relative_error:.1e} against α^{self.degree} (> {self.tolerance:.0e}); biases or residual "
            "paths of different depth make the tail affine or of mixed degree"
        )


def _tensors(model: nn.Module, named: Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]]):
    if isinstance(named, torch.Tensor):
        raise TypeError("named: pass an iterable of tensors or (name, tensor) pairs, not one tensor")
    owned = {id(p) for p in model.parameters()}
    tensors: list[torch.Tensor] = []
    for k, item in enumerate(named):
        name, tensor = item if isinstance(item, tuple) and len(item) == 2 else (f"named[{k}]", item)
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"named[{k}]: expected a tensor or a (name, tensor) pair, got {type(item).__name__}")
        if id(tensor) not in owned:
            raise ValueError(f"{name}: not a parameter of {type(model).__name__}")
        if all(t is not tensor for t in tensors):
            tensors.append(tensor)
    if not tensors:
        raise ValueError("named: no parameters to scale")
    return tensors


def _output(model: nn.Module, example_inputs: ExampleInputs, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    parts = [t.detach().double().flatten() for t in output_tensors(call(model, example_inputs))]
    if not parts:
        raise ValueError(f"{type(model).__name__}: the output contains no tensor")
    return torch.cat(parts)


def check_homogeneity(
    model: nn.Module,
    named: Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    example_inputs: ExampleInputs,
    *,
    alphas: Sequence[float] = (0.5, 2.0, 3.0),
    tolerance: float = 1e-4,
    seed: int = 0,
) -> HomogeneityReport:
    """Scale the tensors in ``named`` together by each ``α``; measure ``k`` in ``f(αW) = α^k f(W)``.

    ``named`` is what :func:`lawn.final_homogeneous_params` returns (or any parameters of ``model``).
    ``tolerance`` is on the relative error; raise it for half precision models.
    """
    check_model(model)
    alphas = tuple(float(a) for a in alphas)
    if not alphas or any(not math.isfinite(a) or a <= 0 or a == 1 for a in alphas):
        raise ValueError(f"alphas: expected positive numbers other than 1, got {alphas}")
    tensors = _tensors(model, named)
    originals = [t.detach().clone() for t in tensors]
    outputs = []
    with untouched(model), torch.no_grad():
        try:
            base = _output(model, example_inputs, seed)
            for alpha in alphas:
                for t, original in zip(tensors, originals):
                    t.copy_(original * alpha)
                outputs.append(_output(model, example_inputs, seed))
        finally:
            for t, original in zip(tensors, originals):
                t.copy_(original)
    base_norm = base.norm().item()
    if not math.isfinite(base_norm) or base_norm == 0:
        raise ValueError(f"{type(model).__name__}: the output is zero or not finite; no degree can be measured")
    logs = [(math.log(a), math.log(max(out.norm().item(), 1e-300) / base_norm)) for a, out in zip(alphas, outputs)]
    fitted = sum(la * lr for la, lr in logs) / sum(la * la for la, _ in logs)
    degree = round(fitted)
    error = max(((out - a**degree * base).norm() / (a**degree * base_norm)).item() for a, out in zip(alphas, outputs))
    return HomogeneityReport(degree, fitted, error, alphas, tolerance)
