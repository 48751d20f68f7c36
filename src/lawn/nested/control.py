"""Model-level controls of a nested network: its KL, its width, BatchNorm re-estimation and MC prediction."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lawn._checks import is_int
from lawn.nested.layers import NestedModule
from lawn.nested.ordering import check_width

__all__ = ["mc_predict", "nested_kl", "nested_modules", "recalibrate_batchnorm", "set_width"]

_KL_PARTS = ("all", "ordering", "weights")


def nested_modules(model: nn.Module) -> list[NestedModule]:
    """Every nested layer and nested-dropout module of ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, NestedModule)]


def _require_nested(model: nn.Module, what: str) -> list[NestedModule]:
    found = nested_modules(model)
    if not found:
        raise ValueError(
            f"{what}: {type(model).__name__} has no nested layers; build it with "
            "lawn.nested.NestedConv2d / lawn.nested.NestedLinear / lawn.nested.NestedDropout"
        )
    return found


def nested_kl(model: nn.Module, part: str = "all") -> torch.Tensor:
    """Sum over nested layers of ``KL(q(z) ‖ p(z))`` (``part="ordering"``), of the keep-probability-weighted weight
    KL (``part="weights"``), or of both (``"all"``).

    In the ELBO the weights are global and the cut ``z`` is drawn per example, so a per-example loss is
    ``CE + nested_kl(model, "ordering") + nested_kl(model, "weights") / N`` for ``N`` training examples.
    """
    if part not in _KL_PARTS:
        raise ValueError(f"part must be one of {_KL_PARTS}, got {part!r}")
    layers = _require_nested(model, "nested_kl")
    terms = []
    for m in layers:
        if part in ("all", "ordering"):
            terms.append(m.ordering_kl())
        if part in ("all", "weights"):
            terms.append(m.weight_kl())
    return torch.stack(terms).sum()


def set_width(model: nn.Module, width: float | None) -> nn.Module:
    """Fix every nested layer's width ``p ∈ [0, 1]`` (keep ``F + ⌊D·p⌋`` groups), or ``None`` to sample cuts."""
    width = check_width(width)
    for m in _require_nested(model, "set_width"):
        m.ordering.width = width
    return model


@contextmanager
def _sampling_weights(layers: Iterable[NestedModule]) -> Iterator[None]:
    layers = list(layers)
    before = [m.sample_weights for m in layers]
    try:
        for m in layers:
            m.sample_weights = True
        yield
    finally:
        for m, b in zip(layers, before):
            m.sample_weights = b


def _inputs(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@contextmanager
def own_modes(model: nn.Module) -> Iterator[None]:
    """Restore every module's own ``training`` flag on exit (a BatchNorm frozen in eval inside a training model
    comes back in eval), whatever the body sets."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: Iterable[Any], batches: int | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics at the model's current width.

    Resets the statistics and averages them (``momentum=None``, a cumulative mean) over ``loader`` (batches of
    inputs or ``(inputs, targets, …)``; the first ``batches`` only if given), with only the BatchNorm layers in
    training mode and the weights at their means. Modes and momenta are restored afterwards; if the loader gives
    no batch (or the forward pass fails) the old statistics are restored too and the error is raised.
    """
    if batches is not None and (not is_int(batches) or batches < 1):
        raise ValueError(f"recalibrate_batchnorm: batches must be a positive int or None (all), got {batches!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"recalibrate_batchnorm: {type(model).__name__} has no BatchNorm layers")
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False) if v is not None} for m in norms]
    momenta = [m.momentum for m in norms]
    seen = 0
    done = False
    try:
        with own_modes(model):
            model.eval()
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            for i, batch in enumerate(loader):
                if batches is not None and i >= batches:
                    break
                model(_inputs(batch))
                seen += 1
        done = seen > 0
    finally:
        for m, momentum, buffers in zip(norms, momenta, saved):
            m.momentum = momentum
            if not done:
                for k, v in buffers.items():
                    getattr(m, k).copy_(v)
    if seen == 0:
        raise ValueError("recalibrate_batchnorm: the loader gave no batches; the running statistics are unchanged")
    return model


@torch.no_grad()
def mc_predict(model: nn.Module, x: torch.Tensor, samples: int = 8) -> torch.Tensor:
    """Mean of ``softmax(model(x))`` over ``samples`` draws, in eval mode (BatchNorm running statistics).

    Each draw samples the weights of layers with weight noise, and the cuts if the width is ``None``; at a fixed
    width of a model without weight noise all draws agree. Each module's own mode is restored afterwards.
    """
    if not is_int(samples) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    layers = _require_nested(model, "mc_predict")
    with own_modes(model), _sampling_weights(layers):
        model.eval()
        total = torch.softmax(model(x), dim=-1)
        for _ in range(samples - 1):
            total += torch.softmax(model(x), dim=-1)
    return total / samples
