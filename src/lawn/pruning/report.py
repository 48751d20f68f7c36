"""``sparsity_report(model)``: how many weights are zero, per layer and in total."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lawn.pruning._names import canonical_names, effective_tensors, weighted_layers
from lawn.pruning.apply import current_masks


@torch.no_grad()
def sparsity_report(model: nn.Module, params: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """``{name: {"numel", "zeros", "sparsity"}, …, "total": {…}}`` over ``params`` (default: every conv/linear
    weight and every masked tensor, a tied weight once). Counts exact zeros of the weight the forward pass uses,
    so it reads a masked model and one whose masks were removed the same way."""
    tensors = effective_tensors(model)
    if params is not None:
        names = list(params)
    else:  # every weight once: a tied weight under its first listed name
        canonical, first = canonical_names(model), {}
        for n in weighted_layers(model) + list(current_masks(model)):
            first.setdefault(canonical[n], n)
        names = list(first.values())
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise ValueError(f"params: unknown parameter(s) {unknown}")
    out: dict[str, dict[str, float]] = {}
    numel = zeros = 0
    for name in names:
        t = tensors[name]
        z = int((t == 0).sum())
        out[name] = {"numel": t.numel(), "zeros": z, "sparsity": z / max(1, t.numel())}
        numel, zeros = numel + t.numel(), zeros + z
    out["total"] = {"numel": numel, "zeros": zeros, "sparsity": zeros / max(1, numel)}
    return out
