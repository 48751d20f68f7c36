"""Loading a checkpoint into a constraint: what is refused (before anything changes), what wins, what is kept.

A constraint's checkpoint is its base optimizer's, with the constraint's entries riding in ``param_groups``
(:mod:`lawn.constraint.keys`). ``load_state_dict`` first :func:`check` s the checkpoint's entries against this
constraint (a checkpoint of the bare base optimizer has none: fine), then hands the checkpoint to the base's own
``load_state_dict`` (whatever its layout), then :func:`restore` s what the checkpoint did not carry. What wins: the
checkpoint's counters, phase, switch-rule memory and targets, and (as for ``lr``) its options, with a warning naming
each option that differs from the constructor's; a checkpoint without the constraint's entries keeps the current
ones, every one of them (the switch rule's included).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from lawn._checks import is_int, is_number
from lawn.constraint._dtensor import full
from lawn.constraint.auto_switch import AUTO, AutoSwitch
from lawn.constraint.keys import Keys
from lawn.constraint.options import MAX_TARGET, MIN_TARGET, group_options, require
from lawn.constraint.reference import GRANULARITIES, compute_dtype
from lawn.constraint.targets import expected_shape
from lawn.constraint.weights import Entry


def find_param_groups(state_dict: Any) -> list[dict[str, Any]] | None:
    """The ``param_groups`` list of a checkpoint, wherever its optimizer put it (``Lookahead`` nests the base's
    checkpoint under ``"base_optimizer"``); ``None`` if there is none."""
    if not isinstance(state_dict, Mapping):
        return None
    groups = state_dict.get("param_groups")
    if isinstance(groups, list) and all(isinstance(g, Mapping) for g in groups):
        return groups
    for value in state_dict.values():
        found = find_param_groups(value)
        if found is not None:
            return found
    return None


def check(
    saved_groups: list[dict[str, Any]] | None,
    groups: list[dict[str, Any]],
    entries: list[list[Entry]],
    keys: Keys,
) -> None:
    """Refuse a checkpoint whose entries do not fit this constraint, or hold values no run leaves (a counter that is
    not a count, an option out of range, a negative or NaN target); warn about options that differ.

    ``saved_groups``: the checkpoint's ``param_groups`` (``None`` if its layout has none: then the base optimizer's
    own ``load_state_dict`` judges it, and the constraint keeps its current entries); ``groups``, ``entries``: the
    constraint's current ``param_groups`` and its constrained tensors per group.
    """
    if saved_groups is None:
        return
    require(
        len(saved_groups) == len(groups),
        f"load_state_dict: the checkpoint has {len(saved_groups)} param groups, this optimizer has {len(groups)}",
    )
    differ: dict[str, tuple[Any, Any]] = {}
    for i, (saved, group, constrained) in enumerate(zip(saved_groups, groups, entries)):
        count = saved.get("params")
        require(
            not isinstance(count, list) or len(count) == len(group["params"]),
            f"load_state_dict: param group {i} of the checkpoint has {len(count or [])} parameters, this "
            f"optimizer's has {len(group['params'])}; load it into an optimizer over the same parameters",
        )
        for key in keys.options:
            if key in saved and saved[key] != group[key]:
                differ.setdefault(key, (saved[key], group[key]))
        _check_scalars(saved, group, keys)
        _check_switch(saved, group, keys)
        _check_targets(saved, group, constrained, keys)
    if differ:
        listed = ", ".join(f"{key}={old!r} (constructor: {new!r})" for key, (old, new) in differ.items())
        warnings.warn(
            f"load_state_dict: the checkpoint's options differ from the constructor's: {listed}; the "
            "checkpoint's are used (as for lr). To change one, set it in every param group after loading.",
            UserWarning,
            stacklevel=3,
        )


def _check_scalars(saved: Mapping[str, Any], group: Mapping[str, Any], keys: Keys) -> None:
    """The counters, the phase and the options the checkpoint leaves are values the constraint can run with (a
    corrupt one would otherwise fail, or flip weights, in the middle of a later step)."""
    steps, frozen = saved.get(keys.steps, group[keys.steps]), saved.get(keys.frozen, group[keys.frozen])
    switch_step = saved.get(keys.switch_step)
    require(
        is_int(steps) and steps >= 0, f"load_state_dict: {keys.steps}={steps!r} in the checkpoint; expected an int >= 0"
    )
    require(isinstance(frozen, bool), f"load_state_dict: {keys.frozen}={frozen!r} in the checkpoint; expected a bool")
    require(
        switch_step is None or (is_int(switch_step) and switch_step >= 0),
        f"load_state_dict: {keys.switch_step}={switch_step!r} in the checkpoint; expected None or an int >= 0",
    )
    try:
        group_options({key: saved.get(key, group[key]) for key in keys.options}, keys)
    except (TypeError, ValueError) as err:
        raise type(err)(f"load_state_dict: an option in the checkpoint ({keys.prefix}*) is invalid: {err}") from None


def _check_switch(saved: Mapping[str, Any], group: Mapping[str, Any], keys: Keys) -> None:
    """The switch rule the checkpoint leaves: a step count, or ``"auto"`` with its constants and memory."""
    free_steps = saved.get(keys.free_steps, group[keys.free_steps])
    require(
        free_steps == AUTO or (is_int(free_steps) and free_steps >= 0),
        f"load_state_dict: {keys.free_steps}={free_steps!r} in the checkpoint; expected an int >= 0 or {AUTO!r}",
    )
    if free_steps == AUTO:
        missing = [key for key in keys.auto if key not in saved and key not in group]
        require(
            not missing,
            f"load_state_dict: the checkpoint switches automatically ({keys.free_steps}={AUTO!r}) but has no {missing}",
        )
        auto = {key: saved.get(key, group.get(key)) for key in keys.auto}
        try:
            AutoSwitch.from_group(auto, keys)
        except (TypeError, ValueError) as err:
            raise ValueError(f"load_state_dict: the checkpoint's automatic switch: {err}") from None
        memory = (auto[keys.auto_last_log_norm], auto[keys.auto_peak_growth])
        require(
            all(is_number(value) for value in memory),
            f"load_state_dict: {keys.auto_last_log_norm}, {keys.auto_peak_growth}={memory!r} in the checkpoint; "
            "expected numbers",
        )


def _check_targets(saved: Mapping[str, Any], group: Mapping[str, Any], constrained: list[Entry], keys: Keys) -> None:
    granularity = saved.get(keys.granularity, group[keys.granularity])
    require(
        granularity in GRANULARITIES,
        f"load_state_dict: {keys.granularity}={granularity!r} in the checkpoint; expected one of {GRANULARITIES}",
    )
    if keys.targets not in saved:
        require(
            not saved.get(keys.frozen, False),
            f"load_state_dict: the checkpoint is past the switch but has no target norms "
            f"({keys.targets}) for {[e.name for e in constrained]}",
        )
        return
    targets = saved[keys.targets]
    require(
        isinstance(targets, list) and len(targets) == len(group["params"]),
        f"load_state_dict: {keys.targets} in the checkpoint should be a list with one entry per parameter "
        f"of its group ({len(group['params'])})",
    )
    missing = []
    for entry in constrained:
        target = targets[entry.index]
        if target is None:
            missing.append(entry.name)
            continue
        require(
            granularity != "row" or entry.tensor.dim() >= 2,
            f"load_state_dict: the checkpoint has granularity='row' for '{entry.name}', which has "
            f"{entry.tensor.dim()} dim(s)",
        )
        expected = expected_shape(entry, granularity)
        require(
            isinstance(target, torch.Tensor) and tuple(target.shape) == expected,
            f"load_state_dict: target of '{entry.name}' has shape {tuple(getattr(target, 'shape', ()))}, "
            f"expected {expected} for granularity={granularity!r}",
        )
        if saved.get(keys.frozen, False):
            _check_target_values(entry.name, target)
    require(
        not missing or not saved.get(keys.frozen, False),
        f"load_state_dict: the checkpoint is past the switch but has no target norm for {missing}",
    )


def _check_target_values(name: str, target: torch.Tensor) -> None:
    """A recorded target is 0 (a pruned unit) or lies in ``[MIN_TARGET, MAX_TARGET]``, as ``freeze()`` leaves it:
    a negative one would flip the weight at every retraction, a NaN one would silently stop retracting it."""
    values = full(target).detach()  # compared in its own dtype, as freeze() compares it
    bad = ~((values == 0) | ((values >= MIN_TARGET) & (values <= MAX_TARGET)))
    if bool(bad.any()):
        where = "" if values.dim() == 0 else f" (row {int(bad.nonzero()[0, 0])})"
        raise ValueError(
            f"load_state_dict: target norm of '{name}'{where} in the checkpoint is {float(values[bad].flatten()[0])}; "
            f"a recorded target is 0 (a pruned unit) or in [{MIN_TARGET:g}, {MAX_TARGET:g}]: the checkpoint is damaged"
        )


def current(groups: list[dict[str, Any]], keys: Keys) -> list[dict[str, Any]]:
    """The constraint's entries now, per group (what a checkpoint without them leaves in place)."""
    return [{key: group[key] for key in keys.all if key in group} for group in groups]


def restore(groups: list[dict[str, Any]], entries: list[list[Entry]], kept: list[dict[str, Any]], keys: Keys) -> None:
    """After the base loaded a checkpoint: put back every entry it did not carry; targets as the engine keeps them
    (fp32, fp64 for fp64 weights, on the weight's device, not shared with the checkpoint)."""
    for group, constrained, before in zip(groups, entries, kept):
        if keys.frozen in group and keys.switch_step not in group:  # a checkpoint older than the key: unknown
            group[keys.switch_step] = None
        for key, value in before.items():
            group.setdefault(key, value)
        targets = group[keys.targets] = list(group[keys.targets])
        for entry in constrained:
            p, j = entry.tensor, entry.index
            if targets[j] is not None:
                targets[j] = targets[j].to(device=p.device, dtype=compute_dtype(p.dtype), copy=True)
