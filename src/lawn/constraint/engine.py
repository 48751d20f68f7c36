"""The constraint engine: keep chosen weights on norm spheres around any ``torch.optim.Optimizer``.

``NormConstraint(base, params, ...)`` wraps ``base`` and, once *frozen*, does at every step::

    g ← g − (⟨g, w⟩ / ‖w‖²) · w        (tangent projection, optional)
    base.step()
    w ← w · (target / ‖w‖)              (retraction onto the sphere)

for each selected weight ``w`` (per tensor, or per row = per output unit). Before the switch it changes
nothing. Targets are either the norms recorded at the switch (LAWN) or a fixed value (WRS), times
``target_scale``. :class:`lawn.LAWN` is this engine with recorded targets.

Checkpoint layout (standard ``Optimizer.state_dict`` format, so schedulers, DCP and frameworks see a plain
optimizer): scalars (``lawn_steps``, ``lawn_frozen`` and the options) live in every entry of
``param_groups``; the target norms (fp32; fp64 for fp64 weights) live in ``state[p]["lawn_target_norm"]``
from the first step on.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from lawn.constraint import reference
from lawn.constraint._dtensor import full, is_dtensor
from lawn.constraint.compiled import compiled_project_onto_tangent_, compiled_retract_
from lawn.constraint.foreach import foreach_project_onto_tangent_, foreach_retract_
from lawn.constraint.fused import fused_project_onto_tangent_, fused_retract_
from lawn.constraint.fused_step import FusedStep
from lawn.constraint.reference import GRANULARITIES, Granularity, compute_dtype

TARGET_KEY = "lawn_target_norm"
_OWN_STATE_KEYS = frozenset({TARGET_KEY})

NamedParams = Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def _require(condition: bool, message: str, error: type[Exception] = ValueError) -> None:
    if not condition:
        raise error(message)


def _named(params: NamedParams, base: Optimizer) -> list[tuple[str, torch.Tensor]]:
    """``params`` as ``(name, tensor)`` pairs; unnamed tensors are named by their place in ``base``."""
    place = {
        id(p): f"param_groups[{i}]['params'][{j}]"
        for i, group in enumerate(base.param_groups)
        for j, p in enumerate(group["params"])
    }
    _require(not isinstance(params, torch.Tensor), "params: pass an iterable of tensors, not one tensor", TypeError)
    named: list[tuple[str, torch.Tensor]] = []
    for k, item in enumerate(params):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, tensor = item
        else:
            name, tensor = None, item
        _require(
            isinstance(tensor, torch.Tensor),
            f"params[{k}]: expected a tensor or a (name, tensor) pair, got {type(item).__name__}",
            TypeError,
        )
        named.append((name or place.get(id(tensor), f"params[{k}]"), tensor))
    return named


class NormConstraint(Optimizer):
    """Wrap ``base`` so that the tensors in ``params`` keep a fixed norm after the switch.

    Args:
        base: any ``torch.optim.Optimizer`` that holds every tensor of ``params``.
        params: the constrained tensors, plain or as ``(name, tensor)`` pairs (names appear in errors).
        free_steps: applied steps before the switch; 0 switches now.
        granularity: ``"tensor"`` (one norm per tensor) or ``"row"`` (one per output unit, dims 1.. reduced).
        project_gradient: project gradients onto the sphere's tangent space before ``base.step()``.
        target_norm: ``None`` records the norms at the switch; a number fixes every target to it.
        target_scale: targets are multiplied by this (< 1 attenuates further).
        foreach: multi-tensor kernels (default) or the per-tensor reference (``False``).
        retract_every: retract after steps ``k, 2k, ...`` only (WRS's interval); 1 retracts after every step.
        compiled: fuse the projection and the retraction with ``torch.compile`` (compiles at the first
            constrained step; falls back to the foreach path, with a warning, if compiling fails).
        fused: ``None`` (default): with a ``torch.optim.Adam``/``AdamW``/``SGD`` base, the constrained CPU fp32/bf16
            tensors' whole step (projection, base update, retraction) runs in the C++ kernel of
            :mod:`lawn.constraint.fused_step`; every other tensor and base takes the foreach path. ``True``: the
            same, and the remaining fp32 CPU tensors' projection and retraction go through the C++ kernel of
            :mod:`lawn.constraint.fused`. ``False``: neither kernel. The kernels are built at first use (about a
            minute, then cached); if building fails, one warning and the foreach path.
    """

    def __init__(
        self,
        base: Optimizer,
        params: NamedParams,
        *,
        free_steps: int,
        granularity: Granularity = "tensor",
        project_gradient: bool = True,
        target_norm: float | None = None,
        target_scale: float = 1.0,
        foreach: bool | None = None,
        retract_every: int = 1,
        compiled: bool = False,
        fused: bool | None = None,
    ) -> None:
        _require(
            isinstance(base, Optimizer),
            f"base: expected a torch.optim.Optimizer, got {type(base).__name__}",
            TypeError,
        )
        _require(not isinstance(base, NormConstraint), "base: is already wrapped by LAWN/NormConstraint")
        _require(
            isinstance(free_steps, int) and not isinstance(free_steps, bool),
            f"free_steps: expected an int, got {free_steps!r}",
            TypeError,
        )
        _require(free_steps >= 0, f"free_steps: must be >= 0, got {free_steps}")
        _require(granularity in GRANULARITIES, f"granularity: expected one of {GRANULARITIES}, got {granularity!r}")
        _require(
            isinstance(project_gradient, bool),
            f"project_gradient: expected a bool, got {project_gradient!r}",
            TypeError,
        )
        _require(_positive_finite(target_scale), f"target_scale: must be a finite number > 0, got {target_scale!r}")
        _require(
            target_norm is None or _positive_finite(target_norm),
            f"target_norm: must be None or a finite number > 0, got {target_norm!r}",
        )
        _require(
            foreach is None or isinstance(foreach, bool),
            f"foreach: expected None or a bool, got {foreach!r}",
            TypeError,
        )
        _require(isinstance(compiled, bool), f"compiled: expected a bool, got {compiled!r}", TypeError)
        _require(not (compiled and foreach is False), "compiled=True runs the fused path: leave foreach unset")
        _require(fused is None or isinstance(fused, bool), f"fused: expected None or a bool, got {fused!r}", TypeError)
        _require(not (fused and foreach is False), "fused=True runs the fused kernel: leave foreach unset")
        _require(not (fused and compiled), "fused and compiled: choose one of the two fast paths")
        _require(
            isinstance(retract_every, int) and not isinstance(retract_every, bool),
            f"retract_every: expected an int, got {retract_every!r}",
            TypeError,
        )
        _require(retract_every >= 1, f"retract_every: must be >= 1, got {retract_every}")

        named = _named(params, base)
        _require(len(named) > 0, "params: no tensors to constrain")
        group_of = {id(p): i for i, group in enumerate(base.param_groups) for p in group["params"]}
        seen: dict[int, str] = {}
        for name, p in named:
            _require(id(p) in group_of, f"params: '{name}' is not held by the base optimizer")
            _require(id(p) not in seen, f"params: '{name}' is listed twice (also as '{seen.get(id(p))}')")
            seen[id(p)] = name
            _require(not p.is_sparse, f"params: '{name}' is sparse; LAWN constrains dense tensors only")
            _require(
                granularity != "row" or p.dim() >= 2,
                f"params: '{name}' has {p.dim()} dim(s); granularity='row' needs >= 2 (use 'tensor')",
            )
            if free_steps == 0:  # we freeze below: refuse bad norms before anything is written
                _checked_norms(name, p, granularity)

        self.base = base
        self.defaults = base.defaults
        self._constrained: list[list[torch.Tensor]] = [
            [p for p in group["params"] if id(p) in seen] for group in base.param_groups
        ]
        self._names: dict[torch.Tensor, str] = {p: seen[id(p)] for group in self._constrained for p in group}
        self._foreach = True if foreach is None else foreach
        self._compiled = compiled
        self._fused = fused is True
        # lawn.constraint.fused_step: the fused constrained step for the bases it implements (None: not used)
        use_fused_step = fused is not False and not compiled and foreach is not False
        self._fused_step = FusedStep.for_base(base) if use_fused_step else None
        # p → (p._version, target) recorded when ‖p‖ = target held (after a retraction, at the switch, at a
        # load): while both are unchanged, the projection reuses the target as ‖p‖ instead of computing it.
        self._on_sphere: dict[torch.Tensor, tuple[int, torch.Tensor]] = {}
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._warned_capturable_if_run_uncaptured = True
        self._patch_step_function()

        options = {
            "lawn_free_steps": free_steps,
            "lawn_granularity": granularity,
            "lawn_project_gradient": project_gradient,
            "lawn_fixed_target": target_norm,
            "lawn_target_scale": float(target_scale),
            "lawn_retract_every": retract_every,
            "lawn_steps": 0,
            "lawn_frozen": False,
        }
        for key, value in options.items():
            self.defaults.setdefault(key, value)
            for group in base.param_groups:
                group[key] = value
        if free_steps == 0:
            self.freeze()

    # ----------------------------------------------------------------- the shared optimizer contract
    @property
    def state(self) -> dict[torch.Tensor, Any]:  # type: ignore[override]
        return self.base.state

    @state.setter
    def state(self, value: dict[torch.Tensor, Any]) -> None:
        self.base.state = value

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.base.param_groups = value

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.phase}, {len(self._names)} constrained tensors, base={self.base!r})"

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add an (unconstrained) group to the base optimizer; it inherits LAWN's counters and options."""
        first = self.param_groups[0]
        self.base.add_param_group(param_group)
        for key in first:
            if key.startswith("lawn_"):
                self.param_groups[-1][key] = first[key]
        self._constrained.append([])

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint of this optimizer (or of the bare base one, keeping LAWN's current settings).

        Target norms are restored in fp32 (fp64 for fp64 weights), also for low-precision parameters; everything
        is validated before anything is changed.
        """
        saved_groups = state_dict["param_groups"]
        _require(
            len(saved_groups) == len(self.param_groups),
            f"load_state_dict: the checkpoint has {len(saved_groups)} param groups, this optimizer has "
            f"{len(self.param_groups)}",
        )
        param_of_id = {
            saved_id: p
            for saved, group in zip(saved_groups, self.param_groups)
            for saved_id, p in zip(saved["params"], group["params"])
        }
        targets: dict[int, torch.Tensor] = {}
        base_state: dict[Any, Any] = {}
        for saved_id, entry in state_dict["state"].items():
            entry = dict(entry)
            target = entry.pop(TARGET_KEY, None)
            p = param_of_id.get(saved_id)
            if target is not None and p is not None and p in self._names:
                group = saved_groups[self._group_index(p)]
                granularity = group.get("lawn_granularity", self.param_groups[0]["lawn_granularity"])
                expected = () if granularity == "tensor" else (p.shape[0],)
                _require(
                    tuple(target.shape) == expected,
                    f"load_state_dict: target of '{self._names[p]}' has shape {tuple(target.shape)}, "
                    f"expected {expected} for granularity={granularity!r}",
                )
                targets[id(p)] = target
            if entry:
                base_state[saved_id] = entry
        if any(group.get("lawn_frozen", False) for group in saved_groups):
            missing = [self._names[p] for group in self._constrained for p in group if id(p) not in targets]
            _require(
                not missing,
                f"load_state_dict: the checkpoint is past the switch but has no target norm for {missing}",
            )

        current = {key: value for key, value in self.param_groups[0].items() if key.startswith("lawn_")}
        self.base.load_state_dict({**state_dict, "state": base_state})
        for group in self.param_groups:
            for key, value in current.items():
                group.setdefault(key, value)
        for group in self._constrained:
            for p in group:
                if id(p) in targets:
                    target = targets[id(p)].to(device=p.device, dtype=compute_dtype(p.dtype), copy=True)
                    self.state[p][TARGET_KEY] = target
        self._on_sphere.clear()
        if self.phase == "constrained":  # a checkpoint's weights were saved on their spheres (after a retraction)
            self._mark_on_sphere([p for group in self._constrained for p in group])

    # ----------------------------------------------------------------- LAWN's own API
    @property
    def phase(self) -> str:
        """``"free"`` before the switch, ``"constrained"`` after it."""
        return "constrained" if self.param_groups[0]["lawn_frozen"] else "free"

    @property
    def steps(self) -> int:
        """Optimizer steps applied so far (steps skipped by GradScaler are not counted)."""
        return self.param_groups[0]["lawn_steps"]

    @property
    def constrained_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """The constrained tensors with their names, in the base optimizer's order."""
        return [(self._names[p], p) for group in self._constrained for p in group]

    @property
    def target_norms(self) -> dict[str, torch.Tensor]:
        """``name → target norm`` (fp32, fp64 for fp64 weights; empty before the switch)."""
        if self.phase == "free":
            return {}
        return {name: self.state[p][TARGET_KEY] for name, p in self.constrained_parameters}

    @torch.no_grad()
    def freeze(self) -> None:
        """Switch to the constrained phase now: record each target norm, then keep it.

        Raises ``ValueError`` naming the tensor (and row) whose norm is zero or not finite; nothing is changed
        then.
        """
        new_targets: dict[int, torch.Tensor] = {}
        for group, constrained in zip(self.param_groups, self._constrained):
            for p in constrained:
                current = _checked_norms(self._names[p], p, group["lawn_granularity"])
                fixed = group["lawn_fixed_target"]
                target = current if fixed is None else torch.full_like(current, float(fixed))
                new_targets[id(p)] = target * group["lawn_target_scale"]
        for group, constrained in zip(self.param_groups, self._constrained):
            for p in constrained:
                self.state[p][TARGET_KEY] = new_targets[id(p)]
            if group["lawn_fixed_target"] is not None or group["lawn_target_scale"] != 1.0:
                self._retract(group, constrained)
        for group in self.param_groups:
            group["lawn_frozen"] = True

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Project (if constrained), ``base.step()``, retract (if constrained); return the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._refuse_sparse_gradients()
        # ---- lawn.constraint.fused_step: project → base step → retract, fused (False: it took no tensor) ----
        if self._fused_step is not None and self.param_groups[0]["lawn_frozen"] and self._fused_step.step(self):
            self._count_step()
            return loss
        # ----
        # Under torch.compile, the code after base.step() is a separate resume function. Reading the phase from
        # param_groups there (base.step() does not change it) and keeping loop variables out of this frame make it
        # one function in both phases that has seen the step counter change before the switch: the switch then
        # recompiles each compiled function once, and the counter never again.
        if self.param_groups[0]["lawn_frozen"]:
            self._project_all()
        self._base_step()
        if self.param_groups[0]["lawn_frozen"] and self._retracts_this_step():
            self._retract_all()
        self._count_step()
        return loss

    # ----------------------------------------------------------------- internals
    def _refuse_sparse_gradients(self) -> None:
        for constrained in self._constrained:
            for p in constrained:
                if p.grad is not None and p.grad.is_sparse:
                    raise ValueError(f"step: '{self._names[p]}' has a sparse gradient; LAWN needs dense gradients")

    def _project_all(self) -> None:
        for group, constrained in zip(self.param_groups, self._constrained):
            if group["lawn_project_gradient"]:
                self._project(group, [p for p in constrained if p.grad is not None])

    def _retract_all(self) -> None:
        for group, constrained in zip(self.param_groups, self._constrained):
            self._retract(group, [p for p in constrained if p.grad is not None])

    def _group_index(self, p: torch.Tensor) -> int:
        return next(i for i, group in enumerate(self._constrained) if any(q is p for q in group))

    def _project(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        granularity = group["lawn_granularity"]
        if self._compiled:
            compiled_project_onto_tangent_([p.grad for p in params], params, granularity)
        elif self._fused:
            fused_project_onto_tangent_([p.grad for p in params], params, granularity, self._known_norms(params))
        elif self._foreach:
            foreach_project_onto_tangent_([p.grad for p in params], params, granularity, self._known_norms(params))
        else:
            for p in params:
                p.grad.copy_(reference.project_onto_tangent(p.grad, p, granularity))

    def _retract(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        granularity = group["lawn_granularity"]
        targets = [self.state[p][TARGET_KEY] for p in params]
        if self._compiled:
            compiled_retract_(params, targets, granularity)
        elif self._fused:
            fused_retract_(params, targets, granularity)
        elif self._foreach:
            foreach_retract_(params, targets, granularity)
        else:
            for p, target in zip(params, targets):
                p.copy_(reference.retract(p, target, granularity))
        self._mark_on_sphere(params)

    def _mark_on_sphere(self, params: list[torch.Tensor]) -> None:
        """Record that each ``‖p‖`` equals its target now (see ``_known_norms``)."""
        if torch.compiler.is_compiling():  # version counters in compiled code would recompile every step
            return
        for p in params:
            self._on_sphere[p] = (p._version, self.state[p][TARGET_KEY])

    def _known_norms(self, params: list[torch.Tensor]) -> list[torch.Tensor | None] | None:
        """Per tensor, its target if ``‖p‖ = target`` still holds, else ``None`` (the projection computes it).

        It holds while neither ``p`` nor its target has changed since it was recorded: every in-place change of
        a tensor (the base step, ``load_state_dict`` of the model, any edit under ``torch.no_grad()``) bumps
        its version counter, and a new target is a new tensor. Writes through ``p.data``, which bypass the
        counter, are not seen: after such a write the next projection is off by the norm's change, and the
        retraction that follows restores ``‖p‖ = target`` and the invariant.
        """
        if torch.compiler.is_compiling():
            return None
        known: list[torch.Tensor | None] = []
        for p in params:
            record = self._on_sphere.get(p)
            target = self.state[p][TARGET_KEY]
            known.append(target if record is not None and record[0] == p._version and record[1] is target else None)
        return known

    def _base_step(self) -> None:
        """``base.step()``, hiding LAWN's own state from optimizers whose state for a tensor is still empty.

        Optimizers initialise a tensor's state lazily when ``len(state[p]) == 0``; a LAWN key there would make
        them skip that and fail (``KeyError: 'exp_avg'``).
        """
        hidden = {
            id(p): (p, self.state.pop(p))
            for constrained in self._constrained
            for p in constrained
            if p in self.state and self.state[p].keys() <= _OWN_STATE_KEYS
        }
        try:
            self.base.step()
        finally:
            for p, own in hidden.values():
                self.state[p].update(own)

    def _retracts_this_step(self) -> bool:
        """Always with ``retract_every = 1``; with ``k > 1`` after steps ``k, 2k, ...`` only."""
        return self.param_groups[0]["lawn_retract_every"] == 1 or self._retract_due()

    @torch._disable_dynamo  # torch.compiler.disable, but torch._dynamo is imported at the first call, not here
    def _retract_due(self) -> bool:
        """Read eagerly (off the step counter, which must not enter a compiled graph)."""
        return (self.param_groups[0]["lawn_steps"] + 1) % self.param_groups[0]["lawn_retract_every"] == 0

    @torch._disable_dynamo  # torch.compiler.disable, but torch._dynamo is imported at the first call, not here
    def _count_step(self) -> None:
        """Count an applied step; give new tensors their (placeholder) target; switch after ``free_steps``.

        Plain Python bookkeeping on a counter that changes every step: under ``torch.compile`` it runs eagerly
        (``torch.compiler.disable``) so that the compiled step does not depend on the counter's value.
        """
        steps = self.param_groups[0]["lawn_steps"] + 1
        for group in self.param_groups:
            group["lawn_steps"] = steps
        if self.param_groups[0]["lawn_frozen"]:
            return
        for group, constrained in zip(self.param_groups, self._constrained):
            for p in constrained:
                if TARGET_KEY not in self.state[p]:
                    self.state[p][TARGET_KEY] = _placeholder_target(p, group["lawn_granularity"])
        if self._switch_due(steps):
            self.freeze()
            self._mark_on_sphere([p for group in self._constrained for p in group])

    def _switch_due(self, steps: int) -> bool:
        """Whether the free phase ends after applied step ``steps`` (LAWN's ``free_steps="auto"`` overrides it)."""
        return steps >= self.param_groups[0]["lawn_free_steps"]


def _placeholder_target(p: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Zeros shaped, typed and (for a ``DTensor``) placed like the target ``freeze()`` will record for ``p``.

    Plain tensors get plain zeros; a sharded ``p`` gets zeros laid out like its norms (replicated per tensor,
    sharded like dim 0 per row), so that DCP can save a checkpoint and load one before or after the switch.
    """
    if is_dtensor(p):
        return torch.zeros_like(reference.norms(p, granularity))
    shape = () if granularity == "tensor" else (p.shape[0],)
    return torch.zeros(shape, dtype=compute_dtype(p.dtype), device=p.device)


def _checked_norms(name: str, p: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``reference.norms(p)``, or a ``ValueError`` naming ``p`` (and the row) if one is zero or not finite.

    The check looks at the global norms on every rank (``full``), so all ranks raise or none does.
    """
    current = reference.norms(p, granularity)
    global_norms = full(current)
    bad = ~(torch.isfinite(global_norms) & (global_norms > 0))
    if bool(bad.any()):
        where = "" if global_norms.dim() == 0 else f" (row {int(bad.nonzero()[0, 0])})"
        raise ValueError(
            f"freeze: '{name}'{where} has norm {global_norms[bad].flatten()[0]}; "
            "a zero or non-finite norm cannot be kept fixed"
        )
    return current


def _positive_finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0
