"""The optimizer bases the fused step supports, each with its options (shared by the C++ and Triton tests)."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Every supported base and option (Adam: weight_decay, amsgrad, maximize; AdamW fused / not; SGD: momentum,
# dampening, nesterov, weight_decay, maximize, no momentum).
BASES: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam_l2_amsgrad_maximize": lambda ps: torch.optim.Adam(
        ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True, maximize=True
    ),
    "adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    "adamw_amsgrad": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05, amsgrad=True),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd_nesterov_l2": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "sgd_dampening_maximize": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, dampening=0.3, maximize=True),
    "sgd_plain": lambda ps: torch.optim.SGD(ps, lr=0.05, weight_decay=1e-3),
}
