"""One-shot magnitude pruning: which weights to keep, as ``{name: bool mask}``.

``magnitude_masks(model, s)`` removes the fraction ``s`` of the smallest ``|w|`` among the chosen weights,
over all of them at once (``scope="global"``: one threshold for the whole selection) or within each tensor
(``scope="layer"``). Exactly ``round(s · n)`` weights are removed (ties broken by position).

Already pruned model (compounding): only the surviving weights are ranked and ``s`` is the fraction *of the
survivors* to remove; the returned masks are the full masks (old ∧ new). ``k`` rounds at rate ``r`` thus
leave ``(1 − r)^k`` of the weights — the iterative-pruning schedule.

Default selection: every conv/linear ``weight`` except the first and the last such layer (the convention of
the lottery-ticket literature: the input layer is small and the output layer sensitive).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from lawn._checks import is_int, is_number
from lawn.pruning._names import canonical_names, effective_tensors, weighted_layers
from lawn.pruning.apply import current_masks

SCOPES = ("global", "layer")


def prunable_weights(model: nn.Module, params: Iterable[str] | str | None = None) -> list[str]:
    """Names of the weights to prune: ``params`` checked against the model, ``"all"`` for every conv/linear
    weight (Hugging Face ``Conv1D`` included; a tied weight once), or (``None``) every conv/linear weight except
    the first and last."""
    tensors = effective_tensors(model)
    if params is None or params == "all":
        layers = weighted_layers(model)
        names = layers if params == "all" else layers[1:-1]
        if not names:
            raise ValueError(
                f"nothing to prune: the model has {len(layers)} conv/linear layer(s) and the default leaves out "
                "the first and the last; pass params=[names] or params='all'"
            )
        return names
    if isinstance(params, str):
        raise TypeError(f"params: expected a list of parameter names, None or 'all', got {params!r}")
    names = list(params)
    if not names:
        raise ValueError("nothing to prune: params is empty")
    for name in names:
        if name not in tensors:
            known = ", ".join(list(tensors)[:8])
            raise ValueError(f"params: unknown parameter {name!r}; the model has {known}, …")
    if len(set(names)) != len(names):
        raise ValueError(f"params: names repeat in {names}")
    canonical = canonical_names(model)
    first: dict[str, str] = {}
    for name in names:
        other = first.setdefault(canonical[name], name)
        if other != name:
            raise ValueError(f"params: {other!r} and {name!r} are one tied weight; name it once")
    return names


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    if not is_number(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{what}: must be a number in [0, 1) (the fraction of weights removed), got {sparsity!r}")
    return float(sparsity)


@torch.no_grad()
def magnitude_masks(
    model: nn.Module, sparsity: float, scope: str = "global", params: Iterable[str] | str | None = None
) -> dict[str, torch.Tensor]:
    """Masks keeping the largest ``|w|``: ``round(sparsity · n)`` survivors removed per scope (see module doc).

    The model is not modified.
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
    names = prunable_weights(model, params)
    tensors = effective_tensors(model)
    existing = current_masks(model)
    weights = [tensors[n].detach() for n in names]
    alive = [existing[n] if n in existing else torch.ones_like(w, dtype=torch.bool) for n, w in zip(names, weights)]
    if scope == "layer":
        return {
            n: _prune(w.abs().flatten(), a.flatten(), sparsity).view_as(w) for n, w, a in zip(names, weights, alive)
        }
    flat = _prune(
        torch.cat([w.abs().flatten().float() for w in weights]), torch.cat([a.flatten() for a in alive]), sparsity
    )
    out, start = {}, 0
    for n, w in zip(names, weights):
        out[n] = flat[start : start + w.numel()].view_as(w).clone()
        start += w.numel()
    return out


def _prune(scores: torch.Tensor, alive: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``alive`` with the ``round(sparsity · #alive)`` lowest-scoring alive entries switched off."""
    survivors = alive.nonzero().flatten()
    k = int(math.floor(sparsity * len(survivors) + 0.5))
    keep = alive.clone()
    if k:
        order = torch.argsort(scores[survivors].float(), stable=True)
        keep[survivors[order[:k]]] = False
    return keep


def random_masks(like: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The *random pruning* control: for every tensor of ``like`` a mask with the same shape and the same number
    of survivors, their positions drawn uniformly (``torch.randperm`` under ``seed``; the global random state is
    not touched). Per-layer sparsity is kept, so only *which* weights survive differs from ``like``."""
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    if not isinstance(like, Mapping) or not like:
        raise ValueError("like: expected a non-empty dict {parameter name: bool mask} (e.g. magnitude_masks(...))")
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, mask in like.items():
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"like[{name!r}]: expected a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
        kept = int(mask.sum())
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[torch.randperm(mask.numel(), generator=generator)[:kept]] = True
        out[name] = flat.view(mask.shape).to(mask.device)
    return out
