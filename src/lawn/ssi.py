"""A weight-scale-shift-invariant penalty (after Liu, Cui, Chan, arXiv 2008.02965).

In a positively homogeneous network (linear / conv layers, ReLU, max-pooling), ``W_i → c·W_i`` (with
``b_i → c·b_i``) and ``W_{i+1} → W_{i+1} / c`` leave the function unchanged for any ``c > 0``. Weight decay
``Σ_l ‖W_l‖²`` changes under that shift, so it can be lowered without changing the model: it does not
measure the network's *intrinsic* norm. The product of the layer norms does not change, and bounds the
input gradient, ``‖∂f/∂x‖ ≤ Π_l ‖W_l‖₂ ≤ Π_l ‖W_l‖_F``; a residual block ``x + F(x)`` contributes
``1 + Π_{l∈F} ‖W_l‖`` to the product. With ``P`` that product over ``L`` factors::

    "product":    P                   (the input-gradient bound itself)
    "geometric":  L · P^(2/L)         (default) = min over all scale shifts of Σ_l ‖W_l‖² (AM-GM):
                                      weight decay at the balanced representative, on weight decay's scale

Both are invariant to scale shifting and are monotone in each other. Biases do not enter (they do not
scale with ``1/c``). Only the abstract of the paper was available to us; this is the invariant it
describes, not a transcription of the paper's exact formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Form = Literal["geometric", "product"]
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class ResidualBranch:
    """The layers of a residual branch ``F`` in ``x + F(x)``; it contributes ``1 + Π ‖W_l‖`` as one factor."""

    layers: Sequence[Layer]


Layer = torch.Tensor | nn.Module | ResidualBranch


def scale_shift_invariant_penalty(layers: nn.Module | Sequence[Layer], *, form: Form = "geometric") -> torch.Tensor:
    """The invariant penalty of ``layers`` as a differentiable scalar (add ``λ ×`` it to the loss).

    Args:
        layers: a model (its ``Linear``/``Conv`` layers in registration order, read as a chain), or a
            sequence of weight tensors, layers with a ``weight``, and :class:`ResidualBranch` groups.
        form: ``"geometric"`` (``L · P^(2/L)``) or ``"product"`` (``P``), with ``P = Π`` of the factors.
    """
    if form not in ("geometric", "product"):
        raise ValueError(f"form: expected 'geometric' or 'product', got {form!r}")
    if isinstance(layers, nn.Module):
        found = [m for m in layers.modules() if isinstance(m, _LAYER_TYPES)]
        if not found:
            raise ValueError(f"layers: {type(layers).__name__} has no Linear or Conv layers")
        layers = found
    log_factors = [_log_factor(item, f"layers[{k}]") for k, item in enumerate(_as_list(layers, "layers"))]
    log_product = torch.stack(log_factors).sum()
    if form == "product":
        return log_product.exp()
    count = len(log_factors)
    return count * torch.exp(2.0 * log_product / count)


def _log_factor(item: Layer, where: str) -> torch.Tensor:
    if isinstance(item, ResidualBranch):
        inner = [_log_factor(x, f"{where}.layers[{k}]") for k, x in enumerate(_as_list(item.layers, where))]
        return torch.log1p(torch.stack(inner).sum().exp())
    weight = item.weight if isinstance(item, nn.Module) else item
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{where}: expected a weight tensor, a layer with a weight, or a ResidualBranch")
    if weight.dim() < 2:
        raise ValueError(f"{where}: a weight needs >= 2 dims, got shape {tuple(weight.shape)}")
    return _safe_log(torch.linalg.vector_norm(weight.float()))


def _safe_log(norm: torch.Tensor) -> torch.Tensor:
    """``log(norm)``, ``-inf`` at 0 with a zero gradient there (not NaN): an all-zero weight (a zero-initialised
    head) makes the product 0, and its subgradient 0 is taken."""
    positive = norm > 0
    return torch.where(positive, torch.log(torch.where(positive, norm, torch.ones_like(norm))), -torch.inf)


def _as_list(items: Sequence[Layer], where: str) -> list[Layer]:
    if isinstance(items, torch.Tensor) or not isinstance(items, Sequence):
        raise TypeError(f"{where}: expected a model or a sequence of layers, got {type(items).__name__}")
    if len(items) == 0:
        raise ValueError(f"{where}: no layers")
    return list(items)
