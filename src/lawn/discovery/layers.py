"""What a model's parameters are to a norm constraint, decided from their layers: a weight or not, the dim of its
output units, its pruning mask.

Discovery (:func:`lawn.final_homogeneous_params`, :func:`lawn.params_feeding_normalization`) and
:func:`lawn.all_layer_weights` hand their weights over as :class:`lawn.constraint.NamedWeight` entries built here,
so that what the constraint needs to know travels with each weight (nothing is recorded anywhere else):

* **output dim** (the rows of ``granularity="row"``): 1 for ``ConvTranspose*`` (``in × out × k…``) and Hugging Face
  ``Conv1D`` (``in × out``), 0 for every other layer; a dim set by hand with
  :func:`lawn.constraint.set_output_dim` wins;
* **mask**: a weight pruned by a mask (lawn's :class:`lawn.pruning.WeightMask` parametrization, or
  ``torch.nn.utils.prune``) carries it (read when the constraint switches), so that a unit pruned on purpose,
  zero and masked, is skipped rather than refused;
* **parametrized weights** (``torch.nn.utils.parametrize``: a pruning mask, a hardened unified layer of
  :mod:`lawn.unification`, ``weight_norm``): the weight the layer computes with is not a parameter; the trainable
  tensors it is computed from (``parametrizations.weight.original``, ``original0``, ``original1``) are what a
  constraint keeps, whatever their dims;
* **not weights**: a module lists the parameters that have ≥ 2 dims but are not weights in its ``lawn_not_weights``
  attribute (the nested layers' ``log_sigma2`` variances).

This module reads module types, parametrizations and attributes only; it imports no family.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from lawn.constraint.weights import NamedWeight, recorded_output_dim

#: a module attribute: the names of its parameters that are not weights (a variance, a scale), though ≥ 2-dim
NOT_WEIGHTS = "lawn_not_weights"


def output_dim_of(module: nn.Module) -> int:
    """The dim of ``module.weight`` that indexes output units: 1 for ``ConvTranspose*`` and HF ``Conv1D``, else 0."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd) or type(module).__name__ == "Conv1D":
        return 1
    return 0


class LayerMask:
    """The current pruning mask of ``module.<tensor>`` (``None`` when it has none), read at each call: the mask
    buffers of its parametrizations (lawn's ``WeightMask``: a ``mask`` of the weight's shape) and the
    ``<tensor>_mask`` buffer of ``torch.nn.utils.prune``, combined."""

    def __init__(self, module: nn.Module, tensor: str) -> None:
        self.module, self.tensor = module, tensor

    def __call__(self) -> torch.Tensor | None:
        masks = []
        if parametrize.is_parametrized(self.module, self.tensor):
            chain = self.module.parametrizations[self.tensor]
            shape = chain.original.shape if hasattr(chain, "original") else None
            masks = [
                p.mask for p in chain if isinstance(getattr(p, "mask", None), torch.Tensor) and p.mask.shape == shape
            ]
        buffer = getattr(self.module, f"{self.tensor}_mask", None)
        if isinstance(buffer, torch.Tensor) and hasattr(self.module, f"{self.tensor}_orig"):
            masks.append(buffer)
        if not masks:
            return None
        combined = masks[0] != 0
        for mask in masks[1:]:
            combined = combined & (mask != 0)
        return combined

    def __repr__(self) -> str:
        return f"LayerMask({type(self.module).__name__}.{self.tensor})"


def _layer_of(model: nn.Module, name: str) -> tuple[nn.Module, str, str | None]:
    """``(layer, tensor name, stored name)`` for a parameter name of ``model``: for ``a.parametrizations.weight.
    original0`` the layer ``a``, ``"weight"`` and ``"original0"``; for ``a.weight_orig`` (``torch.nn.utils.prune``)
    ``a``, ``"weight"`` and ``None``; else the owning module, the attribute and ``None``."""
    path, _, attribute = name.rpartition(".")
    parts = path.split(".") if path else []
    if len(parts) >= 2 and parts[-2] == "parametrizations":
        return model.get_submodule(".".join(parts[:-2])), parts[-1], attribute
    owner = model.get_submodule(path)
    pruned = attribute.removesuffix("_orig")
    if pruned != attribute and isinstance(getattr(owner, pruned + "_mask", None), torch.Tensor):
        return owner, pruned, None
    return owner, attribute, None


def describe(model: nn.Module, name: str, p: torch.Tensor) -> tuple[bool, int, LayerMask | None]:
    """``(is a weight, output dim, mask)`` for the parameter ``name`` of ``model`` (nothing is computed: a
    parametrized weight is judged by its stored tensors, so no parametrization runs)."""
    layer, tensor, stored = _layer_of(model, name)
    if tensor in getattr(layer, NOT_WEIGHTS, ()):
        return False, 0, None
    if stored is None:
        is_weight = p.dim() >= 2
    else:  # the tensors a parametrized weight is computed from: all of them, whatever their dims
        chain = layer.parametrizations[tensor]
        is_weight = tensor.endswith("weight") or any(t.dim() >= 2 for t in chain.parameters(recurse=False))
    like_weight = p.dim() >= 2 and stored in (None, "original")  # the stored tensor has the weight's layout
    recorded = recorded_output_dim(p)
    dim = recorded if recorded is not None else (output_dim_of(layer) if like_weight and tensor == "weight" else 0)
    mask = LayerMask(layer, tensor) if stored in (None, "original") else None
    return is_weight, dim, mask if mask is not None and mask() is not None else None


def named_weight(model: nn.Module, name: str, p: torch.Tensor) -> NamedWeight:
    """``(name, p)`` as a :class:`~lawn.constraint.NamedWeight` with its layer's output dim and mask."""
    _, dim, mask = describe(model, name, p)
    return NamedWeight(name, p, dim, mask)
