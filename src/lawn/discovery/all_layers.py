"""``all_layer_weights(model)``: every layer's weight, for LAWN over all layers (the paper's later version).

The final homogeneous sub-network (:func:`lawn.final_homogeneous_params`) is what LAWN needs to bound the
logits: constraining it is enough, and it touches nothing else. The later version of the paper constrains
"the weight norms of layers", all of them. For a weight that feeds a normalization (BatchNorm, LayerNorm) the
function does not depend on ``‖W‖``; without a constraint that norm keeps growing under plain training and the
effective step ``lr / ‖W‖²`` keeps shrinking; fixing it keeps the effective step under the schedule's control
(what weight decay does implicitly for such weights, and what :class:`lawn.WRS` does explicitly).

The rule needs no forward pass: a weight is a trainable parameter with at least 2 dims (the weights of
``Linear``, ``Conv*``, ``Embedding``, attention projections); biases, normalization scales and other 1-dim
parameters are left free, as LAWN's tail leaves them.
"""

from __future__ import annotations

import torch
from torch import nn


def all_layer_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every trainable parameter of ``model`` with ``dim() >= 2``, as ``(name, tensor)`` pairs.

    In ``model.named_parameters()`` order; a parameter shared by several modules is listed once, under its first
    name. Ready for ``lawn.LAWN(base, lawn.all_layer_weights(model), ...)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
