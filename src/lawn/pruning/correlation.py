"""How much of the initialization survives training: ``weight_correlation(θ₀, θ_T)``, per layer and global.

For each chosen weight tensor (and for all of them concatenated, ``"global"``):

- ``overlap``: ``|top_p(|θ₀|) ∩ top_p(|θ_T|)| / k`` with ``k = ceil(p · n)``: the share of the largest
  trained weights that were already among the largest at init, i.e. how much a magnitude mask computed at
  the end agrees with one computed at the start. Independent weights give ``≈ p`` (``chance``); 1 means
  magnitude pruning of the trained net keeps exactly the initially large weights. ``"global"`` ranks all
  layers together, as global pruning does.
- ``pearson``: linear correlation of ``|θ₀|`` and ``|θ_T|`` (magnitudes; chance 0).
- ``spearman``: rank correlation of ``|θ₀|`` and ``|θ_T|`` (ties get their average rank; chance 0): the
  monotone agreement of the orderings that magnitude pruning uses.
- ``cosine``: cosine of the signed vectors θ₀ and θ_T (chance 0; 1 when training only rescaled θ₀). A weight
  that moved little relative to its size keeps all four near 1; a large learning rate drives them to chance.

Liu et al. (ICML 2021) tie the winning property to this correlation; their exact indicator was not available
to us, so all four are reported. ``initial`` / ``trained``: models (read as the forward pass sees them) or state
dicts (masked or not; unpruned names); ``params``: the names (default: the model's default prunable weights, or
every ≥2-D tensor of a state dict); ``masks``: ``{name: bool mask}`` to compare only the surviving weights of a
pruned network (a pruned weight is zero in the trained net and would count as a perfectly kept small weight). A
tensor whose mask keeps no weight (one global threshold can empty a small layer) gets ``numel`` 0 and NaN for the
rest, and adds nothing to ``"global"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from lawn._checks import is_number
from lawn.pruning._names import dense_state, effective_tensors


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1 … n, ties share their mean rank)."""
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    return mean_rank[inverse]


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else math.nan


def _stats(w0: torch.Tensor, wt: torch.Tensor, top: float) -> dict[str, float]:
    a, b = w0.flatten().double(), wt.flatten().double()
    n = a.numel()
    if n == 0:
        return _no_survivors()
    k = max(1, math.ceil(top * n))
    top0 = torch.topk(a.abs(), k, sorted=False).indices
    topt = torch.topk(b.abs(), k, sorted=False).indices
    hit = torch.zeros(n, dtype=torch.bool)
    hit[top0] = True
    overlap = float(hit[topt].sum()) / k
    cos_denom = float(a.norm() * b.norm())
    return {
        "numel": n,
        "overlap": overlap,
        "chance": k / n,
        "pearson": _pearson(a.abs(), b.abs()),
        "spearman": _pearson(_ranks(a.abs()), _ranks(b.abs())),
        "cosine": float((a * b).sum()) / cos_denom if cos_denom > 0 else math.nan,
    }


def weight_correlation(
    initial: Mapping[str, torch.Tensor] | nn.Module,
    trained: Mapping[str, torch.Tensor] | nn.Module,
    top: float = 0.2,
    params: Iterable[str] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, object]:
    """``{"top", "layers": {name: stats}, "global": stats}`` with stats ``overlap, chance, pearson, spearman,
    cosine, numel`` (see the module doc); with ``masks``, over the survivors ``mask = True`` only."""
    if not is_number(top) or not 0.0 < top <= 1.0:
        raise ValueError(f"top: must be a fraction in (0, 1], got {top!r}")
    s0, st = (effective_tensors(s) if isinstance(s, nn.Module) else dense_state(s) for s in (initial, trained))
    if params is None:
        if isinstance(trained, nn.Module) or isinstance(initial, nn.Module):
            from lawn.pruning.masks import prunable_weights

            params = prunable_weights(trained if isinstance(trained, nn.Module) else initial)  # type: ignore[arg-type]
        else:
            params = [k for k, v in st.items() if v.dim() >= 2 and v.is_floating_point()]
    names = list(params)
    if not names:
        raise ValueError("params: no weights to compare")
    for name in names:
        for what, state in (("initial", s0), ("trained", st)):
            if name not in state:
                raise ValueError(f"{what}: has no parameter {name!r}")
        if s0[name].shape != st[name].shape:
            raise ValueError(
                f"{name!r}: initial shape {tuple(s0[name].shape)} != trained shape {tuple(st[name].shape)}"
            )
    keep = {}
    for name in names if masks is not None else ():
        mask = masks.get(name)
        if mask is None:
            continue  # an unpruned tensor: every entry survives
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != st[name].shape:
            raise ValueError(
                f"masks[{name!r}]: expected a bool tensor of shape {tuple(st[name].shape)}, got "
                f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}"
            )
        keep[name] = mask.detach().cpu()
    w0 = {n: s0[n].detach().cpu()[keep[n]] if n in keep else s0[n].detach().cpu() for n in names}
    wt = {n: st[n].detach().cpu()[keep[n]] if n in keep else st[n].detach().cpu() for n in names}
    return {
        "top": float(top),
        "layers": {n: _stats(w0[n], wt[n], top) for n in names},
        "global": _stats(torch.cat([w0[n].flatten() for n in names]), torch.cat([wt[n].flatten() for n in names]), top),
    }


def _no_survivors() -> dict[str, float]:
    """The statistics of a tensor whose mask keeps no weight (global pruning can empty a small layer)."""
    return {"numel": 0, "overlap": math.nan, "chance": math.nan, "pearson": math.nan, "spearman": math.nan,
            "cosine": math.nan}  # fmt: skip
