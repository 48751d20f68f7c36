"""``all_layer_weights(model)``: every layer's weight, for LAWN over all layers (the paper's later version).

The final homogeneous sub-network (:func:`lawn.final_homogeneous_params`) is what LAWN needs to bound the
logits: constraining it is enough, and it touches nothing else. The later version of the paper constrains
"the weight norms of layers", all of them. For a weight that feeds a normalization (BatchNorm, LayerNorm) the
function does not depend on ``‖W‖``; without a constraint that norm keeps growing under plain training and the
effective step ``lr / ‖W‖²`` keeps shrinking; fixing it keeps the effective step under the schedule's control
(what weight decay does implicitly for such weights, and what :class:`lawn.WRS` does explicitly).

The rule needs no forward pass: a weight is a trainable parameter with at least 2 dims (the weights of
``Linear``, ``Conv*``, ``ConvTranspose*``, HF ``Conv1D``, ``Embedding``, attention projections); biases,
normalization scales and other 1-dim parameters are left free, as LAWN's tail leaves them, and so are parameters
a module says are not weights (the variances ``log_sigma2`` of lawn's nested layers). A parametrized weight
(pruned by a mask, hardened by weight unification, ``weight_norm``) is computed from stored tensors: those are
returned, whatever their dims, so that the weight the layer computes with keeps its norm. Each entry carries its
output dim and pruning mask (:mod:`lawn.discovery.layers`).
"""

from __future__ import annotations

from torch import nn

from lawn.constraint.weights import NamedWeight
from lawn.discovery.layers import describe


def all_layer_weights(model: nn.Module) -> list[NamedWeight]:
    """Every trainable weight of ``model`` (see the module docstring), as ``(name, tensor)`` pairs.

    In ``model.named_parameters()`` order; a parameter shared by several modules is listed once, under its first
    name. Each entry is a :class:`lawn.constraint.NamedWeight`: it unpacks as ``(name, tensor)`` and carries the
    dim of the weight's output units (1 for ``ConvTranspose*`` and HF ``Conv1D``) and its pruning mask, for
    ``granularity="row"``. Ready for ``lawn.LAWN(base, lawn.all_layer_weights(model), ...)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    out = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_weight, dim, mask = describe(model, name, p)
        if is_weight:
            out.append(NamedWeight(name, p, dim, mask))
    return out
