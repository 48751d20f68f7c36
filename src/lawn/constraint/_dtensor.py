"""Global values of sharded tensors (``DTensor``, as made by FSDP2); plain tensors pass through untouched.

A reduction over a sharded dim of a ``DTensor`` (a norm, a dot product) gives a *partial* ``DTensor``: each
rank holds its shard's contribution, and ``.item()`` on it would silently return the local value. The helpers
here turn such results into global ones with PyTorch's own collectives. They never import
``torch.distributed.tensor`` themselves, so they also work on torch builds without ``torch.distributed``.
"""

from __future__ import annotations

import sys

import torch


def is_dtensor(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (none can exist before that module is imported)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def reduce_partial(t: torch.Tensor) -> torch.Tensor:
    """``t`` with every pending reduction (``Partial`` placement) done across ranks: ``Replicate`` there.

    Shards stay sharded (a row norm of a row-sharded weight is sharded like the rows); collective: call it on
    every rank.
    """
    if not is_dtensor(t) or not any(p.is_partial() for p in t.placements):
        return t
    from torch.distributed.tensor import Replicate

    return t.redistribute(placements=[Replicate() if p.is_partial() else p for p in t.placements])


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole global value of ``t`` on this rank (for host-side checks); collective for a ``DTensor``."""
    return t.full_tensor() if is_dtensor(t) else t
