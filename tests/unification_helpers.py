"""The small conv net the unification tests (ADMM, export) prune and unify."""

from __future__ import annotations

import torch
from torch import nn


def small_convnet(seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU, Conv-ReLU, then two Linear layers, for 1×8×8 inputs and 3 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 3),
    )  # fmt: skip
