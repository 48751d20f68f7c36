"""Adaptive compression made real: cut a nested network to a physically narrower plain network.

``slice_model(model, p)`` returns a copy in which every nested layer is a plain ``nn.Conv2d`` / ``nn.Linear`` with
only its first ``(F + ⌊D·p⌋) · units_per_group`` output units (its ``norm`` sliced alike, weights at their means),
and every layer that reads those units keeps only the matching input columns. In eval mode its outputs equal the
masked model's at width ``p``.

The walk follows the order in which modules are registered, which must be the order the forward pass runs them
(true of ``nn.Sequential`` stacks and of the usual ``__init__``/``forward`` pairs). Between a cut layer and its
reader only channel-wise modules may run: element-wise activations (ReLU, Sigmoid, Softplus, GELU, …), pooling,
flatten, dropout, BatchNorm, and depthwise convs (sliced channel by channel). A dropped unit leaves the cut layer
as an exact zero, but such a module can turn it into a constant (``sigmoid(0) = ½``, a BatchNorm's
``β − γμ/σ``, a depthwise conv's bias); the walk carries each dropped channel's constant and folds its
contribution into the reader's bias, ``b' = b + W[:, dropped] · c``, which is exact for a ``Linear`` reader and
for a conv reader without padding. Where no fold is exact (a padded conv reads a non-zero constant channel, or a
module that mixes channels such as Softmax or LayerNorm runs) ``slice_model`` raises an error naming the module.
A ``Linear`` after a flatten of ``C`` channels keeps the first ``k·(in_features / C)`` inputs (channel-major
order). Pass ``example_input`` to also check the outputs numerically.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

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


_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.LogSigmoid, nn.Tanhshrink,
    nn.Identity,
)  # fmt: skip
# a constant map stays that constant through these; dropout is the identity in eval
_PASS = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Flatten,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


@dataclass
class _Cut:
    """The activation flowing now: ``channels`` channels of which the first ``kept`` survive; the dropped ones
    are the constants ``const`` (float64, one per dropped channel)."""

    channels: int
    kept: int
    const: torch.Tensor

    @classmethod
    def zeros(cls, channels: int, kept: int) -> _Cut:
        return cls(channels, kept, torch.zeros(channels - kept, dtype=torch.float64))

    @property
    def is_zero(self) -> bool:
        return not bool(self.const.any())


def _has_padding(conv: nn.Conv2d) -> bool:
    return conv.padding == "same" or (conv.padding != "valid" and any(p != 0 for p in conv.padding))


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


def _input_columns(name: str, module: nn.Module, cut: _Cut) -> int:
    """How many leading input columns of ``module`` survive when ``cut.kept`` of ``cut.channels`` channels do."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(
                f"slice_model: {name} is a grouped conv (groups={module.groups}); only depthwise convs "
                "(groups = in_channels) can be sliced after a cut"
            )
        if module.in_channels != cut.channels:
            raise ValueError(
                f"slice_model: {name} reads {module.in_channels} channels but the cut layer before it "
                f"makes {cut.channels}; the registration order must be the forward order"
            )
        return cut.kept
    width = module.in_features
    if width % cut.channels:
        raise ValueError(
            f"slice_model: {name} reads {width} features, not a multiple of the {cut.channels} channels of "
            "the cut layer before it; the registration order must be the forward order"
        )
    return cut.kept * (width // cut.channels)


def _folded_bias(
    name: str, module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, cut: _Cut
) -> torch.Tensor | None:
    """The reader's bias plus what its dropped input channels contribute: ``b + W[:, dropped] · c``."""
    if cut.is_zero:
        return bias
    if isinstance(module, nn.Conv2d):
        if _has_padding(module):
            raise ValueError(
                f"slice_model: {name} (a padded conv) reads dropped channels that are not zero but constants "
                "(a BatchNorm, bias or activation between the cut layer and it makes them); a padded conv turns "
                "a constant channel into a position-dependent input, which no bias can hold. Put the BatchNorm "
                "inside the nested layer (norm=nn.BatchNorm2d(...)) or use a NestedDropout after the activation"
            )
        extra = weight[:, cut.kept :].to(torch.float64).sum(dim=(2, 3)) @ cut.const.to(weight.device)
    else:
        per = weight.shape[1] // cut.channels
        extra = weight[:, cut.kept * per :].to(torch.float64) @ cut.const.to(weight.device).repeat_interleave(per)
    base = torch.zeros_like(extra) if bias is None else bias.to(torch.float64)
    return (base + extra).to(weight.dtype)


def _through(name: str, m: nn.Module, cut: _Cut) -> _Cut:
    """The cut after a channel-wise module ``m`` (its constants mapped), or an error naming ``m``."""
    if isinstance(m, _ELEMENTWISE):
        if isinstance(m, nn.PReLU) and m.weight.numel() != 1:
            raise ValueError(f"slice_model: cannot slice through {name} (PReLU with one slope per channel)")
        with torch.no_grad():
            like = next(m.parameters(), cut.const)
            const = m(cut.const.to(like.device, like.dtype)).to(torch.float64)
        return _Cut(cut.channels, cut.kept, const)
    if isinstance(m, _PASS):
        return cut
    if isinstance(m, _AVG_POOLS):
        if m.padding not in (0, (0,), (0, 0), (0, 0, 0)) and m.count_include_pad and not cut.is_zero:
            raise ValueError(
                f"slice_model: {name} averages zero padding into dropped channels that are constants, which "
                "makes them position-dependent; use count_include_pad=False or no padding"
            )
        return cut
    if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        raise ValueError(
            f"slice_model: cannot slice through {name} ({type(m).__name__}): it mixes channels, so the dropped "
            "ones change the kept ones; apply it after the reader instead"
        )
    raise ValueError(
        f"slice_model: cannot slice through {name} ({type(m).__name__}); between a nested layer and its reader "
        "only channel-wise modules (element-wise activations, pooling, flatten, dropout, BatchNorm, depthwise "
        "convs) may run"
    )


def _bn_const(name: str, bn: _BN, cut: _Cut) -> torch.Tensor:
    """What an eval-mode BatchNorm makes of the dropped channels: ``γ (c − μ) / √(σ² + ε) + β``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"slice_model: {name} keeps no running statistics (track_running_stats=False), so what it makes of "
            "the dropped channels depends on the batch; put it inside the nested layer (norm=...)"
        )
    k = cut.kept
    mean, var = bn.running_mean[k:].double(), bn.running_var[k:].double()
    out = (cut.const.to(mean.device) - mean) / torch.sqrt(var + bn.eps)
    if bn.weight is not None:
        out = out * bn.weight.detach()[k:].double()
    if bn.bias is not None:
        out = out + bn.bias.detach()[k:].double()
    return out


def _slice_depthwise(name: str, m: nn.Conv2d, cut: _Cut) -> tuple[nn.Module, _Cut]:
    """A depthwise conv on a cut: keep the kept channels' filters; a dropped channel's constant ``c`` becomes
    ``c · Σ kernel + b`` (exact without padding, or for ``c = 0`` with zero padding)."""
    if m.in_channels != cut.channels:
        raise ValueError(
            f"slice_model: {name} reads {m.in_channels} channels but the cut layer before it makes {cut.channels}; "
            "the registration order must be the forward order"
        )
    mult = m.out_channels // m.in_channels
    if not cut.is_zero and _has_padding(m) and m.padding_mode == "zeros":
        raise ValueError(
            f"slice_model: {name} (a zero-padded depthwise conv) reads dropped channels that are non-zero "
            "constants, which padding makes position-dependent; put the BatchNorm inside the nested layer"
        )
    weight, bias = m.weight.detach(), None if m.bias is None else m.bias.detach()
    k = cut.kept * mult
    const = cut.const.to(weight.device).repeat_interleave(mult) * weight[k:].to(torch.float64).sum(dim=(1, 2, 3))
    if bias is not None:
        const = const + bias[k:].to(torch.float64)
    new = nn.Conv2d(
        cut.kept, k, m.kernel_size, m.stride, m.padding, m.dilation, cut.kept, bias is not None, m.padding_mode,
        device=weight.device, dtype=weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(weight[:k])
        if bias is not None:
            new.bias.copy_(bias[:k])
    new.train(m.training)
    return new, _Cut(cut.channels * mult, k, const)


def slice_model(model: nn.Module, width: float, example_input: torch.Tensor | None = None) -> nn.Module:
    """A physically narrower copy of ``model`` at width ``p``: plain layers with real smaller weights.

    Its eval-mode outputs equal ``set_width(model, p)``'s (recalibrate BatchNorm at width ``p`` first: the slice
    copies the running statistics); what it cannot make exact it refuses. ``example_input``: also run both on it
    and raise if they differ. The input model is not modified.
    """
    if width is None:
        raise ValueError("slice_model needs a width in [0, 1], not None (a sliced model cannot sample its width)")
    width = check_width(width)
    _require_nested(model, "slice_model")
    sliced = copy.deepcopy(model)
    new: dict[str, nn.Module] = {}
    cut: _Cut | None = None  # the activation flowing now
    producer: str | None = None  # last plain Conv2d/Linear, for a NestedDropout after it
    bns_since: list[str] = []
    modules = dict(_leaves(sliced))
    for name, m in modules.items():
        if isinstance(m, _NestedWeights):
            in_cols = m.weight.shape[1] if cut is None else _input_columns(name, m, cut)
            k = m.units_kept(width)
            w = m.weight.detach()[:k]
            bias = None if m.bias is None else m.bias.detach()[:k]
            if cut is not None:
                bias = _folded_bias(name, m, w, bias, cut)
            layer = _plain(m, w[:, :in_cols], bias)
            if m.norm is not None:
                if not isinstance(m.norm, _BN):
                    raise ValueError(
                        f"slice_model: {name}.norm is {type(m.norm).__name__}; only BatchNorm can be "
                        "sliced channel by channel"
                    )
                layer = nn.Sequential(layer, _slice_bn(m.norm, k))
            new[name], cut, producer, bns_since = layer, _Cut.zeros(m.units, k), None, []
        elif isinstance(m, NestedDropout):
            k = m.units_kept(width)
            if cut is not None and cut.channels == m.units:
                if k <= cut.kept:
                    cut = _Cut.zeros(m.units, k)  # the dropout zeroes every channel from k on
                else:  # channels kept..k-1 keep their constants, the dropout zeroes those from k on
                    const = cut.const.clone()
                    const[k - cut.kept :] = 0
                    cut = _Cut(m.units, cut.kept, const)
            elif producer is not None and (new.get(producer, modules[producer]).weight.shape[0] == m.units):
                p = new.get(producer, modules[producer])
                if isinstance(p, nn.Conv2d) and p.groups != 1:
                    raise ValueError(
                        f"slice_model: {name} follows {producer}, a grouped conv whose outputs cannot be cut "
                        "without cutting its inputs; put the NestedDropout before it"
                    )
                new[producer] = _plain(p, p.weight.detach()[:k], None if p.bias is None else p.bias.detach()[:k])
                for bn in bns_since:
                    new[bn] = _slice_bn(modules[bn], k)
                cut = _Cut.zeros(m.units, k)
            else:
                raise ValueError(
                    f"slice_model: {name} (NestedDropout over {m.units} channels) does not follow a "
                    f"Conv2d/Linear with {m.units} outputs"
                )
            new[name] = nn.Identity()
        elif isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d and cut is not None and _is_depthwise(m):
            new[name], cut = _slice_depthwise(name, m, cut)
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and type(m) in (nn.Conv2d, nn.Linear):
            weight, bias = m.weight.detach(), None if m.bias is None else m.bias.detach()
            if cut is not None:
                bias = _folded_bias(name, m, weight, bias, cut)
                new[name] = _plain(m, weight[:, : _input_columns(name, m, cut)], bias)
            cut, producer, bns_since = None, name, []
        elif isinstance(m, _BN):
            if cut is not None:
                if m.num_features != cut.channels:
                    raise ValueError(
                        f"slice_model: {name} normalizes {m.num_features} channels, not the {cut.channels} "
                        "of the cut layer before it"
                    )
                cut = _Cut(cut.channels, cut.kept, _bn_const(name, m, cut))
                new[name] = _slice_bn(m, cut.kept)
            elif producer is not None:
                bns_since.append(name)
        elif cut is not None:
            cut = _through(name, m, cut)
        elif producer is not None and not isinstance(m, _ELEMENTWISE + _PASS + _AVG_POOLS):
            producer = None  # a module that may mix channels runs before any NestedDropout could cut them
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
