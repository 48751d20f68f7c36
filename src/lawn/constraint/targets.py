"""The target norms a constraint keeps: recorded (or fixed) at the switch, checked, and their placeholders.

At the switch each constrained weight gets its target, one per tensor (0-d) or one per row (``(rows,)``), in
``compute_dtype`` (fp32; fp64 for fp64 weights): its norm then (LAWN), or a fixed value (WRS), times
``target_scale``. A weight (or row) whose norm is zero or not finite cannot be kept at it and is refused, naming
it, unless it is zero *and* pruned by its mask (:mod:`lawn.constraint.weights`): then its target is 0 and it
stays zero. Targets must lie in ``[MIN_TARGET, MAX_TARGET]``, where the fp32 sums of the fast paths stay exact.
Every check looks at the global values on every rank (``full``), so that all ranks raise or none does.
A weight whose own norm is not finite, or above ``MAX_TARGET`` when it is to be kept (no fixed target), raises
:class:`NormDiverged` (a ``ValueError``): training has blown up before the switch, and a training loop may record
that rather than stop.
"""

from __future__ import annotations

import torch

from lawn.constraint import reference
from lawn.constraint._dtensor import full, is_dtensor
from lawn.constraint.options import MAX_TARGET, MIN_TARGET
from lawn.constraint.reference import Granularity, compute_dtype
from lawn.constraint.weights import Entry


class NormDiverged(ValueError):
    """``freeze()`` refused a weight whose own norm is not finite, or above ``MAX_TARGET`` where it would be kept:
    the run diverged before the switch."""


def new_target(entry: Entry, granularity: Granularity, fixed_target: float | None, target_scale: float) -> torch.Tensor:
    """The target ``freeze()`` records for ``entry``, or a ``ValueError`` naming it (and the row) if its norm is zero
    (and it is not pruned there) or not finite, or if the target leaves ``[MIN_TARGET, MAX_TARGET]``; a
    :class:`NormDiverged` when the weight's own norm is not finite, or above ``MAX_TARGET`` and kept as the target."""
    p = entry.tensor
    rows = entry.rows(p) if granularity == "row" else p
    current = reference.norms(rows, granularity)
    global_norms = full(current)
    pruned = entry.pruned(granularity)
    skipped = torch.zeros_like(global_norms, dtype=torch.bool) if pruned is None else pruned & (global_norms == 0)
    zero_or_not_finite = "; a zero or non-finite norm cannot be kept fixed"
    _refuse(entry.name, ~torch.isfinite(global_norms), global_norms, "has norm {}" + zero_or_not_finite, NormDiverged)
    _refuse(entry.name, (global_norms == 0) & ~skipped, global_norms, "has norm {}" + zero_or_not_finite + _PRUNED)
    exact = f"[{MIN_TARGET:g}, {MAX_TARGET:g}] where its fp32 norms stay exact"
    grown = f"has norm {{:.3g}}, outside {exact}: training diverged before the switch; lower the learning rate or "
    if fixed_target is None:  # a fixed target (WRS) rescales any finite norm onto itself
        _refuse(entry.name, global_norms > MAX_TARGET, global_norms, grown + "switch earlier", NormDiverged)
    target = (current if fixed_target is None else torch.full_like(current, float(fixed_target))) * target_scale
    if pruned is not None:
        target = torch.where(skipped, torch.zeros_like(target), target)
    global_target = full(target)
    out_of_range = ((global_target < MIN_TARGET) | (global_target > MAX_TARGET)) & ~skipped
    chosen = f"would get target norm {{:.3g}}, outside {exact}; rescale the weight or choose target_scale / target_norm"
    _refuse(entry.name, out_of_range, global_target, chosen + " accordingly")
    return target


_PRUNED = (
    " (a unit pruned on purpose is skipped when its mask comes with the weight, as lawn.all_layer_weights and "
    "discovery hand it over, or in a lawn.constraint.NamedWeight(..., mask=...))"
)


def _refuse(
    name: str, bad: torch.Tensor, values: torch.Tensor, message: str, error: type[ValueError] = ValueError
) -> None:
    """Raise ``error("freeze: 'name' (row r) " + message.format(value))`` for the first ``bad`` entry, if any."""
    if bool(bad.any()):
        where = "" if values.dim() == 0 else f" (row {int(bad.nonzero()[0, 0])})"
        raise error(f"freeze: '{name}'{where} " + message.format(float(values[bad].flatten()[0])))


def placeholders(group: dict, entries: list[Entry], granularity: Granularity) -> list[torch.Tensor | None]:
    """Targets before the switch: zeros shaped, typed and placed like the ones ``freeze()`` records (``None`` for
    the group's unconstrained tensors), so that DCP can load a checkpoint from either phase."""
    targets: list[torch.Tensor | None] = [None] * len(group["params"])
    for entry in entries:
        p = entry.tensor
        rows = entry.rows(p) if granularity == "row" else p
        if is_dtensor(p):
            targets[entry.index] = torch.zeros_like(reference.norms(rows, granularity))
        else:
            shape = () if granularity == "tensor" else (rows.shape[0],)
            targets[entry.index] = torch.zeros(shape, dtype=compute_dtype(p.dtype), device=p.device)
    return targets


def expected_shape(entry: Entry, granularity: Granularity) -> tuple[int, ...]:
    """The shape of ``entry``'s target at ``granularity``."""
    return () if granularity == "tensor" else (entry.rows(entry.tensor).shape[0],)
