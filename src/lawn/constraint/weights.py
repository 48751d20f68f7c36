"""Which tensors a constraint keeps, and what it must know about each: its name, its rows, its pruning mask.

A constrained weight is handed to the engine as a tensor, a ``(name, tensor)`` pair, a ``(name, tensor,
output_dim)`` triple, or a :class:`NamedWeight` (what discovery and :func:`lawn.all_layer_weights` return: it
unpacks as ``(name, tensor)`` and carries the output dim and the pruning mask that were decided where the weight
was chosen, from its layer). The engine turns each into an :class:`Entry`, its own record of the tensor, and
reads nothing about a weight from anywhere else: the same list gives the same constraint in any process, whatever
ran before.

**Rows** (``granularity="row"``): one norm per output unit. The output dim is 0 for most layers (``Linear``,
``Conv*``: ``out × in × ...``) and 1 for ``ConvTranspose*`` and Hugging Face ``Conv1D`` (``in × out × ...``).
It comes from the entry (a ``NamedWeight``'s or a triple's), else from :func:`set_output_dim`, which tags the
tensor itself (an attribute on the tensor object, set by you), else it is 0.

**Pruned rows**: a row that is exactly zero at the switch *and* masked (every entry of it pruned by the
weight's mask) keeps target 0 and so stays zero; every path then leaves it as it is. Any other zero row is
refused, since it cannot be kept at a fixed non-zero norm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from lawn._checks import is_int
from lawn.constraint._dtensor import is_dtensor
from lawn.constraint.options import require

#: where :func:`set_output_dim` tags a tensor
_TAG = "_lawn_output_dim"

#: a pruning mask: the mask tensor (bool or 0/1, the weight's shape), or a callable returning the current one
Mask = torch.Tensor | Callable[[], torch.Tensor | None] | None


class NamedWeight(tuple):
    """A weight chosen for a constraint: unpacks as ``(name, tensor)``, and carries ``output_dim`` (the dim of its
    output units) and ``mask`` (its pruning mask, a tensor or a callable returning the current one; ``None``: not
    pruned). Discovery, :func:`lawn.all_layer_weights` and :func:`lawn.params_feeding_normalization` return
    these; build one by hand as ``NamedWeight("up.weight", model.up.weight, output_dim=1)``."""

    output_dim: int
    mask: Mask

    def __new__(cls, name: str, tensor: torch.Tensor, output_dim: int = 0, mask: Mask = None) -> NamedWeight:
        self = super().__new__(cls, (name, tensor))
        self.output_dim = output_dim
        self.mask = mask
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickle and copy
        return (self[0], self[1], self.output_dim, self.mask)

    def __repr__(self) -> str:
        extra = (f", output_dim={self.output_dim}" if self.output_dim else "") + (
            ", masked" if self.mask is not None else ""
        )
        return f"NamedWeight({self[0]!r}, shape={tuple(self[1].shape)}{extra})"


def set_output_dim(w: torch.Tensor, dim: int) -> None:
    """Record on ``w`` itself that its output units (its "rows") lie along ``dim`` (1 for ``ConvTranspose*`` and HF
    ``Conv1D`` weights, ``in × out × ...``); a plain ``(name, tensor)`` entry then has these rows. Discovery and
    :func:`lawn.all_layer_weights` decide it from the layer (and honour this tag)."""
    if not is_int(dim) or not 0 <= dim < max(w.dim(), 1):
        raise ValueError(f"dim: expected an int in [0, {w.dim()}), got {dim!r}")
    setattr(w, _TAG, dim)


def output_dim(w: torch.Tensor) -> int:
    """The dim of ``w`` that :func:`set_output_dim` recorded: 0 unless it said otherwise."""
    return getattr(w, _TAG, 0)


def recorded_output_dim(w: torch.Tensor) -> int | None:
    """The dim :func:`set_output_dim` recorded on ``w``; ``None`` if it was never called on it."""
    return getattr(w, _TAG, None)


@dataclass(eq=False)
class Entry:
    """The engine's record of one constrained tensor: where it is (``index`` in its group's ``"params"``), its
    name, the dim of its rows, and its pruning mask (``None``: not pruned)."""

    index: int
    tensor: torch.Tensor
    name: str
    row_dim: int = 0
    mask: Mask = None

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (the weight, its gradient or its mask) with the output dim first: a view."""
        return t if self.row_dim == 0 else t.movedim(self.row_dim, 0)

    def pruned(self, granularity: str) -> torch.Tensor | None:
        """Per tensor (0-d) or per row: where every entry is masked out; ``None`` without a mask."""
        mask = self.mask() if callable(self.mask) else self.mask
        if mask is None or is_dtensor(self.tensor):
            return None
        if tuple(mask.shape) != tuple(self.tensor.shape):
            raise ValueError(
                f"'{self.name}': its mask has shape {tuple(mask.shape)}, the weight {tuple(self.tensor.shape)}"
            )
        kept = self.rows(mask.detach().to(device=self.tensor.device) != 0)
        return ~kept.any() if granularity == "tensor" else ~kept.flatten(1).any(1)


def _entry_parts(item: Any) -> tuple[str | None, torch.Tensor, int | None, Mask]:
    if isinstance(item, NamedWeight):
        return item[0], item[1], item.output_dim, item.mask
    if isinstance(item, tuple) and len(item) in (2, 3) and isinstance(item[0], str):
        return item[0], item[1], item[2] if len(item) == 3 else None, None
    return None, item, None, None


def named_weights(params: Iterable[Any], base: Optimizer) -> list[tuple[str, torch.Tensor, int, Mask]]:
    """``params`` as ``(name, tensor, output dim, mask)``; unnamed tensors are named by their place in ``base``.

    Raises ``TypeError`` / ``ValueError`` naming the entry that is not a tensor or has a bad output dim.
    """
    if isinstance(params, torch.Tensor):
        raise TypeError("params: pass an iterable of tensors, not one tensor")
    place = {
        id(p): f"param_groups[{i}]['params'][{j}]"
        for i, group in enumerate(base.param_groups)
        for j, p in enumerate(group["params"])
    }
    named = []
    for k, item in enumerate(params):
        name, tensor, dim, mask = _entry_parts(item)
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"params[{k}]: expected a tensor, a (name, tensor) pair or a (name, tensor, output_dim) triple, "
                f"got {type(item).__name__}"
            )
        name = name or place.get(id(tensor), f"params[{k}]")
        dim = output_dim(tensor) if dim is None else dim
        if not is_int(dim) or not 0 <= dim < max(tensor.dim(), 1):
            raise ValueError(f"params: '{name}': output_dim must be an int in [0, {tensor.dim()}), got {dim!r}")
        named.append((name, tensor, dim, mask))
    return named


def entries_per_group(
    base: Optimizer, params: Iterable[Any], granularity: str, taken: dict[int, str]
) -> list[list[Entry]]:
    """The constrained tensors per group of ``base``, in its order; refused (naming the entry) if one is not held
    by ``base``, listed twice, constrained already (``taken``: id → the inner constraint's class name), sparse, or
    a vector for ``"row"``."""
    named = named_weights(params, base)
    require(len(named) > 0, "params: no tensors to constrain")
    held = {id(p) for group in base.param_groups for p in group["params"]}
    seen: dict[int, tuple[str, int, Mask]] = {}
    for name, p, row_dim, mask in named:
        require(id(p) in held, f"params: '{name}' is not held by the base optimizer")
        require(id(p) not in seen, f"params: '{name}' is listed twice (also as '{seen.get(id(p), ('',))[0]}')")
        require(id(p) not in taken, f"params: '{name}' is already constrained by the inner {taken.get(id(p))}")
        require(not p.is_sparse, f"params: '{name}' is sparse; LAWN constrains dense tensors only")
        require(
            granularity != "row" or p.dim() >= 2,
            f"params: '{name}' has {p.dim()} dim(s); granularity='row' needs >= 2 (use 'tensor')",
        )
        seen[id(p)] = (name, row_dim, mask)
    return [
        [Entry(j, p, *seen[id(p)]) for j, p in enumerate(group["params"]) if id(p) in seen]
        for group in base.param_groups
    ]
