"""Resuming a study on another machine: check that the nets it re-trains are the ones its written rows came from.

CPU training is not bit-reproducible across machines (oneDNN and MKL pick kernels by instruction set), so a study
that re-trains a net its rows depend on (a lost saved state, a pruning chain replayed up to its first missing round)
may get another net there. Rows record ``state_digest`` of the net they came from, and a resume that re-trains a
net whose digest differs stops with :class:`ResumeMismatch` instead of mixing two nets in one paired cell.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn


class ResumeMismatch(ValueError):
    """A resumed study re-trained a net that differs from the one its written rows came from."""


def state_digest(state: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, 16 hex digits: equal for states equal bit for
    bit, and different for different ones but with probability 2^-64."""
    tensors = state.state_dict() if isinstance(state, nn.Module) else state
    digest = hashlib.sha256()
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
