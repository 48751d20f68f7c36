"""Adaptive compression made real: cut a nested network to a physically narrower plain network.

``slice_model(model, p)`` returns a copy in which every nested layer is a plain ``nn.Conv2d`` / ``nn.Linear`` with
only its first ``(F + ⌊D·p⌋) · units_per_group`` output units (its ``norm`` sliced alike, weights at their means),
and every layer that reads those units keeps only the matching input columns. In eval mode its outputs equal the
masked model's at width ``p``: the dropped units are exact zeros there, so removing them changes no sum.

The walk follows the order in which modules are registered, which must be the order the forward pass runs them
(true of ``nn.Sequential`` stacks and of the usual ``__init__``/``forward`` pairs). Between a cut layer and its
reader only channel-wise modules without parameters (ReLU, pooling, flatten, dropout) or BatchNorm may run; a
``Linear`` after a flatten of ``C`` channels keeps the first ``k·(in_features / C)`` inputs (channel-major order).
Anything else raises an error naming the module; pass ``example_input`` to also check the outputs numerically.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lawn.nested.control import _require_nested, set_width
from lawn.nested.layers import NestedDropout, NestedModule, _NestedWeights
from lawn.nested.ordering import check_width

__all__ = ["slice_model"]

_BN = nn.modules.batchnorm._BatchNorm


def _leaves(model: nn.Module, prefix: str = ""):
    """``(name, module)`` of the leaf modules in registration order; a nested module counts as one leaf."""
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, NestedModule) or not list(child.children()):
            yield full, child
        else:
            yield from _leaves(child, full)


def _plain(template: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A plain ``nn.Conv2d``/``nn.Linear`` like ``template`` with the given (smaller) weight and bias."""
    if isinstance(template, nn.Conv2d):
        new = nn.Conv2d(
            weight.shape[1], weight.shape[0], template.kernel_size, template.stride, template.padding,
            template.dilation, 1, bias is not None, template.padding_mode, device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
    else:
        new = nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(template.training)
    return new


def _slice_bn(bn: _BN, k: int) -> _BN:
    new = copy.deepcopy(bn)
    new.num_features = k
    for name in ("weight", "bias"):
        if getattr(bn, name) is not None:
            setattr(new, name, nn.Parameter(getattr(bn, name).detach()[:k].clone()))
    for name in ("running_mean", "running_var"):
        if getattr(bn, name) is not None:
            setattr(new, name, getattr(bn, name)[:k].clone())
    return new


def _input_columns(name: str, module: nn.Module, channels: int, kept: int) -> int:
    """How many leading input columns of ``module`` survive when ``kept`` of ``channels`` channels do."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(f"slice_model: {name} is a grouped conv (groups={module.groups}); cannot slice its input")
        if module.in_channels != channels:
            raise ValueError(
                f"slice_model: {name} reads {module.in_channels} channels but the cut layer before it "
                f"makes {channels}; the registration order must be the forward order"
            )
        return kept
    width = module.in_features
    if width % channels:
        raise ValueError(
            f"slice_model: {name} reads {width} features, not a multiple of the {channels} channels of "
            "the cut layer before it; the registration order must be the forward order"
        )
    return kept * (width // channels)


def slice_model(model: nn.Module, width: float, example_input: torch.Tensor | None = None) -> nn.Module:
    """A physically narrower copy of ``model`` at width ``p``: plain layers with real smaller weights.

    Its eval-mode outputs equal ``set_width(model, p)``'s (recalibrate BatchNorm at width ``p`` first: the slice
    copies the running statistics). ``example_input``: also run both on it and raise if they differ. The input
    model is not modified.
    """
    if width is None:
        raise ValueError("slice_model needs a width in [0, 1], not None (a sliced model cannot sample its width)")
    width = check_width(width)
    _require_nested(model, "slice_model")
    sliced = copy.deepcopy(model)
    new: dict[str, nn.Module] = {}
    cut: tuple[int, int] | None = None  # (channels, kept) of the activation flowing now
    producer: str | None = None  # last plain Conv2d/Linear, for a NestedDropout after it
    bns_since: list[str] = []
    modules = dict(_leaves(sliced))
    for name, m in modules.items():
        if isinstance(m, _NestedWeights):
            in_cols = m.weight.shape[1] if cut is None else _input_columns(name, m, *cut)
            k = m.units_kept(width)
            w = m.weight.detach()[:k, :in_cols]
            layer = _plain(m, w, None if m.bias is None else m.bias.detach()[:k])
            if m.norm is not None:
                if not isinstance(m.norm, _BN):
                    raise ValueError(
                        f"slice_model: {name}.norm is {type(m.norm).__name__}; only BatchNorm can be "
                        "sliced channel by channel"
                    )
                layer = nn.Sequential(layer, _slice_bn(m.norm, k))
            new[name], cut, producer, bns_since = layer, (m.units, k), None, []
        elif isinstance(m, NestedDropout):
            k = m.units_kept(width)
            if cut is not None and cut[0] == m.units:
                cut = (m.units, min(k, cut[1]))
            elif producer is not None and (new.get(producer, modules[producer]).weight.shape[0] == m.units):
                p = new.get(producer, modules[producer])
                new[producer] = _plain(p, p.weight.detach()[:k], None if p.bias is None else p.bias.detach()[:k])
                for bn in bns_since:
                    new[bn] = _slice_bn(modules[bn], k)
                cut = (m.units, k)
            else:
                raise ValueError(
                    f"slice_model: {name} (NestedDropout over {m.units} channels) does not follow a "
                    f"Conv2d/Linear with {m.units} outputs"
                )
            new[name] = nn.Identity()
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and type(m) in (nn.Conv2d, nn.Linear):
            weight, bias = m.weight.detach(), None if m.bias is None else m.bias.detach()
            if cut is not None:
                new[name] = _plain(m, weight[:, : _input_columns(name, m, *cut)], bias)
            cut, producer, bns_since = None, name, []
        elif isinstance(m, _BN):
            if cut is not None:
                if m.num_features != cut[0]:
                    raise ValueError(
                        f"slice_model: {name} normalizes {m.num_features} channels, not the {cut[0]} "
                        "of the cut layer before it"
                    )
                new[name] = _slice_bn(m, cut[1])
            elif producer is not None:
                bns_since.append(name)
        elif cut is not None and (any(True for _ in m.parameters()) or any(True for _ in m.buffers())):
            raise ValueError(
                f"slice_model: cannot slice through {name} ({type(m).__name__}); between a nested layer "
                "and its reader only parameter-free channel-wise modules and BatchNorm may run"
            )
    for name, module in new.items():
        parent_name, _, attr = name.rpartition(".")
        parent = sliced.get_submodule(parent_name) if parent_name else sliced
        parent._modules[attr] = module
    if example_input is not None:
        _check_equal(model, sliced, width, example_input)
    return sliced


@torch.no_grad()
def _check_equal(model: nn.Module, sliced: nn.Module, width: float, x: torch.Tensor) -> None:
    masked = set_width(copy.deepcopy(model), width).eval()
    mode = sliced.training
    want, got = masked(x), sliced.eval()(x)
    sliced.train(mode)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise ValueError(
            f"slice_model: the sliced model's outputs differ from the masked model's at width {width} "
            "(a module between a nested layer and its reader is not channel-wise, or the registration "
            "order is not the forward order)"
        )
