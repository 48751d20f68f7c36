"""MimicNorm (Fei et al., AAAI 2021; reference code Kid-key/MimicNorm): two light operations instead of BN.

1. *Weight mean*: every convolution filter is kept zero-mean, after initialization and after every step::

       W_i ← W_i − mean(W_i)        (W_i = filter i: all dims but the output dim)

   which, the paper shows, whitens activations and keeps the network in BN's regime.
2. *Last BN*: every BatchNorm layer is removed (identity plus a per-channel bias) and one
   ``BatchNorm1d(num_classes, affine=False)`` normalizes the logits, which tunes the learning rate
   adaptively.

Without the intermediate BN layers a training step saves fewer activations for the backward pass
(see ``benchmarks/mimicnorm_memory.py``). Train the converted model from scratch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from lawn._checks import is_int

NamedOrPlain = Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


class ChannelBias(nn.Module):
    """``x + b`` with one learnable bias per channel (dim 1): what is left of a BatchNorm layer."""

    def __init__(self, num_features: int, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.reshape((1, -1) + (1,) * (x.dim() - 2))


class LastBatchNorm(nn.Module):
    """``BatchNorm1d(num_classes, affine=False)(body(x))``: MimicNorm's one remaining normalization."""

    def __init__(self, body: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.body = body
        where = next(iter(body.parameters()), None)
        dtype = where.dtype if where is not None and where.is_floating_point() else None
        self.last_bn = nn.BatchNorm1d(  # on the body's device and in its floating dtype (fp64 models stay fp64)
            num_classes, affine=False, device=where.device if where is not None else None, dtype=dtype
        )

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.last_bn(self.body(*args, **kwargs))


def convert_to_mimicnorm(model: nn.Module, num_classes: int) -> LastBatchNorm:
    """A converted deep copy of ``model``: each BatchNorm → :class:`ChannelBias`, a last BN on the logits.

    ``model`` must return logits of shape ``(batch, num_classes)``; it is not modified. Centre the copy's
    filters (at initialization and after every step) with :func:`center_filters_after_step`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes: expected an int >= 1, got {num_classes!r}")
    body = copy.deepcopy(model)
    for parent in list(body.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(parent, name, _bias_for(child))
    return LastBatchNorm(_bias_for(body) if isinstance(body, _BatchNorm) else body, num_classes)


def _bias_for(bn: _BatchNorm) -> ChannelBias:
    like = bn.bias if bn.bias is not None else bn.running_mean
    if like is None:
        return ChannelBias(bn.num_features)
    return ChannelBias(bn.num_features, device=like.device, dtype=like.dtype)


def mimicnorm_filters(
    model: nn.Module,
    *,
    exclude_1x1: bool = False,
    exclude_depthwise: bool = False,
    min_fan_in: int = 0,
) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, weight)`` of ``model``'s ``Conv1d/2d/3d`` layers that MimicNorm centres.

    Args:
        exclude_1x1: skip convolutions whose kernel is 1 (× 1 × 1).
        exclude_depthwise: skip convolutions with one input channel per group (depthwise).
        min_fan_in: skip filters with at most this many inputs (``in/groups × kernel``). The reference code
            centres only filters with fan-in > 50, which skips depthwise convs and an RGB stem; 0 keeps all.
    """
    chosen = []
    for module_name, module in model.named_modules():
        if type(module) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
            continue
        w = module.weight
        if exclude_1x1 and all(k == 1 for k in w.shape[2:]):
            continue
        if exclude_depthwise and w.shape[1] == 1 and module.groups > 1:
            continue
        if w[0].numel() <= min_fan_in:
            continue
        chosen.append((f"{module_name}.weight" if module_name else "weight", w))
    return chosen


@torch.no_grad()
def center_filters_(params: NamedOrPlain) -> None:
    """``W_i ← W_i − mean(W_i)`` in place for every filter (index of dim 0) of every tensor in ``params``."""
    for w in _tensors(params):
        w.sub_(w.mean(dim=tuple(range(1, w.dim())), keepdim=True))


def center_filters_after_step(
    optimizer: Optimizer,
    params: nn.Module | NamedOrPlain,
    *,
    exclude_1x1: bool = False,
    exclude_depthwise: bool = False,
    min_fan_in: int = 0,
) -> RemovableHandle:
    """Centre the filters now and after every ``optimizer.step()``; returns the hook's handle.

    ``params`` is a model (its convolutions, chosen by :func:`mimicnorm_filters` with the exclusion
    options) or the tensors themselves. Works around any optimizer, and around a wrapper such as LAWN,
    whose step calls the base's; a step that GradScaler skips is not followed by a centring. Nothing is
    added to the optimizer's state, so checkpoints are unchanged.
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(params, nn.Module):
        params = mimicnorm_filters(
            params, exclude_1x1=exclude_1x1, exclude_depthwise=exclude_depthwise, min_fan_in=min_fan_in
        )
    tensors = _tensors(params)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for k, w in enumerate(tensors):
        if id(w) not in held:
            raise ValueError(f"params[{k}]: a tensor of shape {tuple(w.shape)} is not held by the optimizer")
    center_filters_(tensors)
    return optimizer.register_step_post_hook(lambda *_: center_filters_(tensors))


def _tensors(params: NamedOrPlain) -> list[torch.Tensor]:
    """``params`` as a list of tensors, all checked (≥ 2 dims) before anything is done with them."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params: pass an iterable of tensors, not one tensor")
    tensors = []
    for k, item in enumerate(params):
        w = item[1] if isinstance(item, tuple) and len(item) == 2 else item
        if not isinstance(w, torch.Tensor) or w.dim() < 2:
            raise ValueError(f"params[{k}]: filters need a tensor with >= 2 dims, got {_describe(item)}")
        tensors.append(w)
    return tensors


def _describe(item: object) -> str:
    if isinstance(item, tuple) and item and isinstance(item[0], str):
        return f"'{item[0]}' ({_describe(item[1])})"
    if isinstance(item, torch.Tensor):
        return f"a tensor of shape {tuple(item.shape)}"
    return type(item).__name__
