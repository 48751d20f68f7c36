"""Base optimizers by name. LAMB and LARS come from ``pytorch_optimizer`` (not rewritten here).

Weight decay means what each optimizer's own ``weight_decay`` means: L2 added to the gradient for SGD, Adam
and LARS; decoupled decay for AdamW, LAMB and AdamP. With ``weight_decay = 0`` AdamW is Adam. AdamP (Heo et
al., 2021) is Adam with a radial projection of the update for scale-invariant weights, LAWN's closest peer.

``fused=True`` takes torch's fused kernel (``fused=True``: one kernel for all parameters, CPU or CUDA) where torch
has one (``FUSED``: SGD, Adam, AdamW); the others have none and are built as without it. The fused kernels compute
the same update in another order, so rows agree with the default ones to rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer


def _sgd(params: Iterable, lr: float, weight_decay: float, momentum: float, fused: bool) -> Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)


def _adam(params: Iterable, lr: float, weight_decay: float, momentum: float, fused: bool) -> Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _adamw(params: Iterable, lr: float, weight_decay: float, momentum: float, fused: bool) -> Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _lamb(params: Iterable, lr: float, weight_decay: float, momentum: float, fused: bool) -> Optimizer:
    from pytorch_optimizer import Lamb

    return Lamb(params, lr=lr, weight_decay=weight_decay)


def _adamp(params: Iterable, lr: float, weight_decay: float, momentum: float, fused: bool) -> Optimizer:
    from pytorch_optimizer import AdamP

    return AdamP(params, lr=lr, weight_decay=weight_decay)


def _lars(params: Iterable, lr: float, weight_decay: float, momentum: float, fused: bool) -> Optimizer:
    from pytorch_optimizer import LARS

    return LARS(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


OPTIMIZERS: dict[str, Callable[[Iterable, float, float, float, bool], Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "lamb": _lamb,
    "adamp": _adamp,
    "lars": _lars,
}


FUSED = ("sgd", "adam", "adamw")  # the names whose torch optimizer has a fused kernel


def build_base_optimizer(
    name: str,
    params: Iterable[torch.Tensor],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    fused: bool = False,
) -> Optimizer:
    """``name`` ∈ ``OPTIMIZERS`` over ``params`` (momentum is used by SGD and LARS only; ``fused`` by ``FUSED``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr, weight_decay, momentum, fused)
