"""Discovery: the weights that feed a normalization layer, i.e. the weights whose scale does not matter.

If a layer's output reaches a normalization layer through ops that are positively homogeneous of degree 1
(reshapes, pooling, dropout) and goes nowhere else, then for every ``c > 0``::

    Norm(layer_{c·W}(x)) = Norm(c · layer_W(x)) = Norm(layer_W(x))      (train mode: batch statistics)

so ``W`` is *scale-invariant* and weight decay on it only changes its effective learning rate. WRS
(:class:`lawn.WRS`) keeps exactly these weights at a fixed norm. The mirror image of LAWN's tail: LAWN
constrains the layers *after* the last normalization, WRS the layers *before* each one.

The rule per normalization kind:

* BatchNorm / InstanceNorm subtract a per-channel mean, which also cancels a per-channel bias: the weight is
  scale-invariant even if its layer has a bias, and per output unit (``per_channel=True``) as long as the
  path keeps the channel axis (pooling, dropout; no reshape).
* LayerNorm / GroupNorm / RMSNorm normalize across channels: only a common scale of the whole tensor is
  invisible, and only if the layer has no bias (a bias would not be rescaled with the weight). They never
  qualify for ``per_channel=True``.

The model is run once on ``example_inputs`` under a ``TorchFunctionMode`` that records every torch call
(layers, reshapes, norms), then the record is read backwards from each normalization's input. Only
``F.linear`` and ``F.conv1d/2d/3d`` weights are found; a layer's output that is used twice (a skip
connection, a second head) or added to something else disqualifies its weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from lawn.constraint.weights import NamedWeight
from lawn.discovery._forward import untouched
from lawn.discovery.layers import named_weight

_T = torch.Tensor

#: layer ops, called as ``layer(input, weight, bias, ...)``
_LAYERS: frozenset[Callable] = frozenset({F.linear, F.conv1d, F.conv2d, F.conv3d})
#: normalizations that subtract a per-channel mean (bias cancels, per-channel scale invisible)
_PER_CHANNEL_NORMS: frozenset[Callable] = frozenset({F.batch_norm, F.instance_norm})
#: normalizations across channels
_ACROSS_CHANNEL_NORMS: frozenset[Callable] = frozenset(
    {F.layer_norm, F.group_norm} | ({F.rms_norm} if hasattr(F, "rms_norm") else set())
)
#: unary ops, homogeneous of degree 1, that keep the channel axis where it was
_KEEP_CHANNELS: frozenset[Callable] = frozenset(
    {
        F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
        F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
        F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
        F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
        _T.contiguous, _T.clone, torch.clone,
    }
)  # fmt: skip
#: unary ops, homogeneous of degree 1, that may move or merge the channel axis
_RESHAPES: frozenset[Callable] = frozenset(
    {
        _T.view, _T.reshape, torch.reshape, _T.flatten, torch.flatten, _T.permute, torch.permute,
        _T.transpose, torch.transpose, _T.t, torch.t,
        _T.squeeze, torch.squeeze, _T.unsqueeze, torch.unsqueeze,
    }
)  # fmt: skip


@dataclass
class _Call:
    func: Callable
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


class _Recorder(TorchFunctionMode):
    """Records every torch call with its tensor inputs and outputs, who produced each tensor, and how often
    each tensor was used; at each normalization it remembers the path back to the layer feeding it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []
        self.producer: dict[int, _Call] = {}
        self.uses: dict[int, int] = {}
        self.paths: list[tuple[Callable, _Call, list[_Call]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outputs:  # size(), dim(), shape: reading metadata is not a use
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        call = _Call(func, tuple(args), kwargs, inputs, outputs)
        self.calls.append(call)  # keeps every tensor alive, so ids stay unique during the trace
        for t in {id(t): t for t in inputs}.values():
            self.uses[id(t)] = self.uses.get(id(t), 0) + 1
        if func in _PER_CHANNEL_NORMS or func in _ACROSS_CHANNEL_NORMS:
            self._record_path(func, inputs[0])
        for t in outputs:
            self.producer[id(t)] = call
        return out

    def _record_path(self, norm: Callable, x: torch.Tensor) -> None:
        """Walk back from the norm's input through pass-through ops to a layer call; remember the path."""
        path: list[_Call] = []
        call = self.producer.get(id(x))
        while call is not None and (call.func in _KEEP_CHANNELS or call.func in _RESHAPES):
            path.append(call)
            call = self.producer.get(id(call.inputs[0]))
        if call is not None and call.func in _LAYERS:
            self.paths.append((norm, call, path))


def _argument(call: _Call, position: int, name: str) -> Any:
    return call.args[position] if len(call.args) > position else call.kwargs.get(name)


def params_feeding_normalization(
    model: nn.Module, example_inputs: Any, *, per_channel: bool = False
) -> list[NamedWeight]:
    """The ``(name, parameter)`` weights (≥ 2-D) whose scale the normalization after them hides (each a
    :class:`lawn.constraint.NamedWeight`, carrying its output dim and pruning mask for ``granularity="row"``).

    Args:
        model: any module; it is run once, in train mode, on ``example_inputs`` (a tensor, or a tuple of
            positional arguments; use a batch of ≥ 2). Its buffers, mode flags and the RNG are restored.
        example_inputs: what ``model`` is called with.
        per_channel: keep only weights whose every output unit (row / filter) is separately scale-invariant
            (BatchNorm / InstanceNorm reached without a reshape), as ``granularity="row"`` needs.

    Returns the weights in ``model.named_parameters()`` order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    names = {id(p): name for name, p in model.named_parameters()}
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    recorder = _Recorder()
    modes = {m: m.training for m in model.modules()}
    try:
        with untouched(model), torch.no_grad(), recorder:  # buffers (new ones removed) and RNG restored
            model.train()
            output = model(*args)
    finally:
        for m, training in modes.items():
            m.training = training
    returned = {id(t) for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)}

    qualifying: dict[int, int] = {}
    for norm, layer, path in recorder.paths:
        weight, bias = _argument(layer, 1, "weight"), _argument(layer, 2, "bias")
        if id(weight) not in names or weight.dim() < 2:
            continue
        if norm not in _PER_CHANNEL_NORMS and (per_channel or bias is not None):
            continue
        if per_channel and any(call.func in _RESHAPES for call in path):
            continue
        produced = [t for call in [layer, *path] for t in call.outputs]
        if any(recorder.uses.get(id(t), 0) != 1 or id(t) in returned for t in produced):
            continue
        qualifying[id(weight)] = qualifying.get(id(weight), 0) + 1
    # a shared weight qualifies only if every one of its uses does
    chosen = {i for i, n in qualifying.items() if n == recorder.uses.get(i, 0)}
    return [named_weight(model, name, p) for name, p in model.named_parameters() if id(p) in chosen]
