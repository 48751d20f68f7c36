"""The constraint engine: keep chosen weights on norm spheres around any ``torch.optim.Optimizer``.

``NormConstraint(base, params, ...)`` wraps ``base`` and, once *frozen*, does at every step::

    g ← g − (⟨g, w⟩ / ‖w‖²) · w        (tangent projection, optional)
    base.step()
    w ← w · (target / ‖w‖)              (retraction onto the sphere)

for each selected weight ``w`` (per tensor, or per row = per output unit). Before the switch it changes
nothing. Targets are either the norms recorded at the switch (LAWN) or a fixed value (WRS), times
``target_scale``. :class:`lawn.LAWN` is this engine with recorded targets.

**Where LAWN's state lives.** Everything LAWN keeps is in ``param_groups``, which every optimizer and every
wrapper (``ZeroRedundancyOptimizer``, ``Lookahead``, DCP, Lightning) saves and restores as it is: the scalars
(``lawn_steps``, ``lawn_frozen``, the options) and the target norms, ``group["lawn_target_norms"]``, a list
aligned with ``group["params"]`` (a 0-d or ``(rows,)`` tensor, fp32 or fp64 like ``compute_dtype``, for a
constrained tensor; ``None`` for the others; zeros until the switch). Nothing is written into ``state[p]``, so
the base's lazy state initialisation is never disturbed and a LAWN checkpoint loads into the plain base
optimizer (which just carries the extra group entries along). ``load_state_dict`` hands the checkpoint to the
base's own ``load_state_dict`` (whatever its layout) and reads LAWN's entries back from ``param_groups``.
What wins at a load: the checkpoint's counters, phase and targets, and (as for ``lr``) its options, with a
warning naming each option that differs from the constructor's; a checkpoint without LAWN's entries (the bare
base optimizer's) keeps LAWN's current settings and targets.

**Several constraints on one optimizer** (WRS on the weights feeding BatchNorm, LAWN on the tail): nest them,
``LAWN(WRS(base, ...), tail, ...)``. Each level keeps its entries under its own prefix (``lawn_`` for the
innermost, ``lawn2_``, ``lawn3_``, ... outwards), so the checkpoint holds both. Two wrappers side by side on
the same base would both step it: refused.
"""

from __future__ import annotations

import inspect
import math
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from lawn.constraint import reference
from lawn.constraint._dtensor import full, is_dtensor
from lawn.constraint.compiled import compiled_project_onto_tangent_, compiled_retract_
from lawn.constraint.foreach import foreach_project_onto_tangent_, foreach_retract_
from lawn.constraint.fused import fused_project_onto_tangent_, fused_retract_
from lawn.constraint.fused_step import FusedStep
from lawn.constraint.reference import GRANULARITIES, Granularity, compute_dtype, output_dim

#: where the innermost engine keeps its target norms in each param group (nested engines: ``lawn2_...``)
TARGETS_KEY = "lawn_target_norms"

NamedParams = Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]]

#: target norms must lie here: the fp32 sums of squares in the fast paths are then exact in range
MIN_TARGET, MAX_TARGET = 1e-12, 1e12
#: ``target_scale`` must lie here
MIN_TARGET_SCALE, MAX_TARGET_SCALE = 1e-6, 1e6

#: base optimizer → the engine wrapping it (two engines side by side on one base would both step it)
_WRAPPED: weakref.WeakKeyDictionary[Optimizer, weakref.ref] = weakref.WeakKeyDictionary()


class _Keys:
    """The names of one engine's entries in ``param_groups`` (prefix ``lawn_`` for the innermost engine)."""

    _OPTIONS = ("free_steps", "granularity", "project_gradient", "fixed_target", "target_scale", "retract_every")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.steps, self.frozen, self.targets = prefix + "steps", prefix + "frozen", prefix + "target_norms"
        self.free_steps, self.granularity = prefix + "free_steps", prefix + "granularity"
        self.project_gradient, self.fixed_target = prefix + "project_gradient", prefix + "fixed_target"
        self.target_scale, self.retract_every = prefix + "target_scale", prefix + "retract_every"
        self.options = tuple(prefix + name for name in self._OPTIONS)
        self.all = (self.steps, self.frozen, self.targets, *self.options)


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


def _needs_closure(base: Optimizer) -> bool:
    """Whether ``base.step`` re-evaluates the closure itself: a required ``closure`` argument (L-BFGS), or the
    two-step ``first_step`` / ``second_step`` protocol of sharpness-aware optimizers (SAM and its variants)."""
    if callable(getattr(base, "first_step", None)) and callable(getattr(base, "second_step", None)):
        return True
    try:
        closure = inspect.signature(type(base).step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def _find_param_groups(state_dict: Any) -> list[dict[str, Any]] | None:
    """The ``param_groups`` list of a checkpoint, wherever its optimizer put it (``Lookahead`` nests the base's
    checkpoint under ``"base_optimizer"``); ``None`` if there is none."""
    if not isinstance(state_dict, Mapping):
        return None
    groups = state_dict.get("param_groups")
    if isinstance(groups, list) and all(isinstance(g, Mapping) for g in groups):
        return groups
    for value in state_dict.values():
        found = _find_param_groups(value)
        if found is not None:
            return found
    return None


class NormConstraint(Optimizer):
    """Wrap ``base`` so that the tensors in ``params`` keep a fixed norm after the switch.

    Args:
        base: any ``torch.optim.Optimizer`` that holds every tensor of ``params`` (or another
            ``NormConstraint``, to combine two constraints; see the module docstring). Optimizers that
            re-evaluate the closure themselves (L-BFGS, SAM) are refused.
        params: the constrained tensors, plain or as ``(name, tensor)`` pairs (names appear in errors).
        free_steps: applied steps before the switch; 0 switches now.
        granularity: ``"tensor"`` (one norm per tensor) or ``"row"`` (one per output unit: all dims but the
            output dim reduced; the output dim is 0, or what :func:`lawn.constraint.set_output_dim` recorded,
            as discovery does for ``ConvTranspose*`` and HF ``Conv1D`` weights).
        project_gradient: project gradients onto the sphere's tangent space before ``base.step()``.
        target_norm: ``None`` records the norms at the switch; a number fixes every target to it.
        target_scale: targets are multiplied by this (< 1 attenuates further); in ``[1e-6, 1e6]``.
        foreach: multi-tensor kernels (default) or the per-tensor reference (``False``).
        retract_every: retract after steps ``k, 2k, ...`` only (WRS's interval); 1 retracts after every step.
        compiled: fuse the projection and the retraction with ``torch.compile`` (compiles at the first
            constrained step; falls back to the foreach path, with a warning, if compiling fails).
        fused: ``None`` (default): with a ``torch.optim.Adam``/``AdamW``/``SGD`` base, the constrained CPU fp32/bf16
            tensors' whole step (projection, base update, retraction) runs in the C++ kernel of
            :mod:`lawn.constraint.fused_step`; every other tensor (CUDA ones included) and base takes the foreach
            path. ``True``: the same, CUDA fp32/bf16 tensors' whole step in the Triton kernels of
            :mod:`lawn.constraint.fused_step_triton` (where ``triton`` is installed; opt-in until a GPU run meets
            the goals in docs/performance_gpu.md), and the remaining fp32 CPU tensors' projection and retraction
            through the C++ kernel of :mod:`lawn.constraint.fused`. ``False``: neither kernel. The kernels are
            built at first use (about a minute, then cached); if building fails, one warning and the foreach path.

    Target norms must lie in ``[1e-12, 1e12]`` (checked at the switch). Methods of the base optimizer that
    LAWN does not define (ScheduleFree's ``train()`` / ``eval()``, ...) are forwarded to it.
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
        _require(
            not _needs_closure(base),
            f"base: {type(base).__name__} re-evaluates the closure inside its step (L-BFGS, SAM); LAWN projects "
            "the gradient once before the base step, which such optimizers would bypass: use another optimizer",
        )
        wrapper = _WRAPPED.get(base)
        _require(
            wrapper is None or wrapper() is None,
            f"base: {type(base).__name__} is already wrapped by {type(wrapper() if wrapper else None).__name__}; "
            "two wrappers side by side would both step it. To combine two constraints, wrap that wrapper: "
            "LAWN(WRS(base, ...), tail, ...)",
        )
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
        _require(
            _positive_finite(target_scale) and MIN_TARGET_SCALE <= target_scale <= MAX_TARGET_SCALE,
            f"target_scale: must be a number in [{MIN_TARGET_SCALE:g}, {MAX_TARGET_SCALE:g}], got {target_scale!r}",
        )
        _require(
            target_norm is None or (_positive_finite(target_norm) and MIN_TARGET <= target_norm <= MAX_TARGET),
            f"target_norm: must be None or a number in [{MIN_TARGET:g}, {MAX_TARGET:g}], got {target_norm!r}",
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

        inner = base if isinstance(base, NormConstraint) else None
        keys = _Keys("lawn_" if inner is None else f"lawn{inner._depth + 2}_")
        taken = {id(p): (type(e).__name__, n) for e in _engines(inner) for n, p in e.constrained_parameters}
        named = _named(params, base)
        _require(len(named) > 0, "params: no tensors to constrain")
        group_of = {id(p): i for i, group in enumerate(base.param_groups) for p in group["params"]}
        seen: dict[int, str] = {}
        for name, p in named:
            _require(id(p) in group_of, f"params: '{name}' is not held by the base optimizer")
            _require(id(p) not in seen, f"params: '{name}' is listed twice (also as '{seen.get(id(p))}')")
            _require(
                id(p) not in taken,
                f"params: '{name}' is already constrained by the inner {taken.get(id(p), ('', ''))[0]}",
            )
            seen[id(p)] = name
            _require(not p.is_sparse, f"params: '{name}' is sparse; LAWN constrains dense tensors only")
            _require(
                granularity != "row" or p.dim() >= 2,
                f"params: '{name}' has {p.dim()} dim(s); granularity='row' needs >= 2 (use 'tensor')",
            )

        self.base = base
        self.defaults = base.defaults
        self._keys = keys
        self._depth = 0 if inner is None else inner._depth + 1
        # per group of the base: (index in group["params"], tensor) of each constrained tensor
        self._constrained: list[list[tuple[int, torch.Tensor]]] = [
            [(j, p) for j, p in enumerate(group["params"]) if id(p) in seen] for group in base.param_groups
        ]
        self._names: dict[torch.Tensor, str] = {p: seen[id(p)] for group in self._constrained for _, p in group}
        self._row_dims: dict[torch.Tensor, int] = {p: output_dim(p) for p in self._names if output_dim(p) != 0}
        self._foreach = True if foreach is None else foreach
        self._compiled = compiled
        self._fused = fused is True
        # lawn.constraint.fused_step: the fused constrained step for the bases it implements (None: not used)
        use_fused_step = fused is not False and not compiled and foreach is not False
        self._fused_step = FusedStep.for_base(base, cuda=fused is True) if use_fused_step else None
        self._switch_failed = False  # a switch raised: the next step() retries it before changing anything
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._warned_capturable_if_run_uncaptured = True
        if free_steps == 0:  # we freeze below: refuse bad norms before anything is written
            options = {"granularity": granularity, "fixed_target": target_norm, "target_scale": target_scale}
            for group in self._constrained:
                for _, p in group:
                    self._new_target(p, **options)
        self._patch_step_function()

        options = {
            keys.free_steps: free_steps,
            keys.granularity: granularity,
            keys.project_gradient: project_gradient,
            keys.fixed_target: target_norm,
            keys.target_scale: float(target_scale),
            keys.retract_every: retract_every,
            keys.steps: 0,
            keys.frozen: False,
        }
        for key, value in options.items():
            self.defaults.setdefault(key, value)
            for group in base.param_groups:
                group[key] = value
        for group, constrained in zip(base.param_groups, self._constrained):
            group[keys.targets] = self._placeholders(group, constrained, granularity)
        _WRAPPED[base] = weakref.ref(self)
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

    def __getattr__(self, name: str) -> Any:
        """Public attributes LAWN does not define come from the base optimizer (ScheduleFree's ``train()``)."""
        base = self.__dict__.get("base")
        if base is None or name.startswith("_"):  # private ones (``_step_supports_amp_scaling``) are not ours
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(base, name)

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
        for key in (*self._keys.options, self._keys.steps, self._keys.frozen):
            self.param_groups[-1][key] = first[key]
        self.param_groups[-1][self._keys.targets] = [None] * len(self.param_groups[-1]["params"])
        self._constrained.append([])

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's checkpoint (LAWN's entries ride in its ``param_groups``), with the hooks run."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self.base.state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint of this optimizer, in the base optimizer's own layout (or of the bare base one).

        LAWN's entries are checked before anything changes; then the base optimizer loads the checkpoint and
        LAWN reads its entries back from ``param_groups``. The checkpoint's counters, phase, targets and
        options win (with a warning naming each option that differs from the constructor's); a checkpoint
        without LAWN's entries keeps the current ones. Targets stay fp32 (fp64 for fp64 weights).
        """
        state_dict = state_dict.copy() if isinstance(state_dict, dict) else state_dict
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._check_checkpoint(_find_param_groups(state_dict))
        current = [{key: group[key] for key in self._keys.all if key in group} for group in self.param_groups]
        self.base.load_state_dict(state_dict)
        for group, constrained, kept in zip(self.param_groups, self._constrained, current):
            for key, value in kept.items():
                group.setdefault(key, value)
            targets = group[self._keys.targets] = list(group[self._keys.targets])
            for j, p in constrained:
                if targets[j] is not None:
                    targets[j] = targets[j].to(device=p.device, dtype=compute_dtype(p.dtype), copy=True)
        self._switch_failed = self._should_switch()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # ----------------------------------------------------------------- LAWN's own API
    @property
    def phase(self) -> str:
        """``"free"`` before the switch, ``"constrained"`` after it."""
        return "constrained" if self.param_groups[0][self._keys.frozen] else "free"

    @property
    def steps(self) -> int:
        """Optimizer steps applied so far (steps skipped by GradScaler are not counted)."""
        return self.param_groups[0][self._keys.steps]

    @property
    def constrained_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """The constrained tensors with their names, in the base optimizer's order."""
        return [(self._names[p], p) for group in self._constrained for _, p in group]

    @property
    def target_norms(self) -> dict[str, torch.Tensor]:
        """``name → target norm`` (fp32, fp64 for fp64 weights; empty before the switch)."""
        if self.phase == "free":
            return {}
        return {
            self._names[p]: group[self._keys.targets][j]
            for group, constrained in zip(self.param_groups, self._constrained)
            for j, p in constrained
        }

    @torch.no_grad()
    def freeze(self) -> None:
        """Switch to the constrained phase now: record each target norm, then keep it. After the switch: no-op.

        Raises ``ValueError`` naming the tensor (and row) whose norm is zero or not finite, or whose target
        would leave ``[1e-12, 1e12]``; nothing is changed then.
        """
        k = self._keys
        if self.param_groups[0][k.frozen]:
            return
        new_targets = [
            [
                self._new_target(p, group[k.granularity], group[k.fixed_target], group[k.target_scale])
                for _, p in constrained
            ]
            for group, constrained in zip(self.param_groups, self._constrained)
        ]
        for group, constrained, targets in zip(self.param_groups, self._constrained, new_targets):
            for (j, _), target in zip(constrained, targets):
                group[k.targets][j] = target
            if group[k.fixed_target] is not None or group[k.target_scale] != 1.0:
                self._retract(group, constrained)
        for group in self.param_groups:
            group[k.frozen] = True
        self._switch_failed = False

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Project (if constrained), ``base.step()``, retract (if constrained); return the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._refuse_sparse_gradients()
        if self._switch_failed:  # retry a switch that failed: it raises again before anything is changed
            self._switch()
        self._constrained_step()
        self._count_step()
        return loss

    # ----------------------------------------------------------------- internals
    def _constrained_step(self) -> None:
        """The step itself: project → ``base.step()`` → retract (the only place the base optimizer steps).

        Under torch.compile, the code after base.step() is a separate resume function. Reading the phase from
        param_groups there (base.step() does not change it) and keeping loop variables out of this frame make it
        one function in both phases that has seen the step counter change before the switch: the switch then
        recompiles each compiled function once, and the counter never again.
        """
        # ---- lawn.constraint.fused_step: project → base step → retract, fused (False: it took no tensor) ----
        if self._fused_step is not None and self.param_groups[0][self._keys.frozen] and self._fused_step.step(self):
            return
        # ----
        if self.param_groups[0][self._keys.frozen]:
            self._project_all()
        self.base.step()
        if self.param_groups[0][self._keys.frozen] and self._retracts_this_step():
            self._retract_all()

    def _should_switch(self) -> bool:
        """Whether to switch to the constrained phase now (checked after each counted step)."""
        first = self.param_groups[0]
        return not first[self._keys.frozen] and first[self._keys.steps] >= first[self._keys.free_steps]

    def _switch(self) -> None:
        """``freeze()``; if it raises, every later ``step()`` retries it first and so changes nothing."""
        self._switch_failed = True
        self.freeze()

    def _refuse_sparse_gradients(self) -> None:
        for constrained in self._constrained:
            for _, p in constrained:
                if p.grad is not None and p.grad.is_sparse:
                    raise ValueError(f"step: '{self._names[p]}' has a sparse gradient; LAWN needs dense gradients")

    def _project_all(self) -> None:
        for group, constrained in zip(self.param_groups, self._constrained):
            if group[self._keys.project_gradient]:
                self._project(group, [p for _, p in constrained if p.grad is not None])

    def _retract_all(self) -> None:
        for group, constrained in zip(self.param_groups, self._constrained):
            self._retract(group, [(j, p) for j, p in constrained if p.grad is not None])

    def _rows(self, tensors: list[torch.Tensor], params: list[torch.Tensor]) -> list[torch.Tensor]:
        """``tensors`` (weights or their gradients) as views with the output dim first, where it is not 0."""
        if not self._row_dims:
            return tensors
        return [t.movedim(self._row_dims[p], 0) if p in self._row_dims else t for t, p in zip(tensors, params)]

    def _project(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """``g ← g − (⟨g, w⟩ / ‖w‖²) · w``; ‖w‖ is computed every time (a weight written through ``.data``,
        e.g. by ``vector_to_parameters`` or an EMA swap, cannot be detected, so its norm is never assumed)."""
        granularity = group[self._keys.granularity]
        grads = [p.grad for p in params]
        if granularity == "row":
            grads, params = self._rows(grads, params), self._rows(params, params)
        if self._compiled:
            compiled_project_onto_tangent_(grads, params, granularity)
        elif self._fused:
            fused_project_onto_tangent_(grads, params, granularity)
        elif self._foreach:
            foreach_project_onto_tangent_(grads, params, granularity)
        else:
            for g, p in zip(grads, params):
                g.copy_(reference.project_onto_tangent(g, p, granularity))

    def _retract(self, group: dict[str, Any], constrained: list[tuple[int, torch.Tensor]]) -> None:
        granularity = group[self._keys.granularity]
        targets = [group[self._keys.targets][j] for j, _ in constrained]
        params = [p for _, p in constrained]
        if granularity == "row":
            params = self._rows(params, params)
        if self._compiled:
            compiled_retract_(params, targets, granularity)
        elif self._fused:
            fused_retract_(params, targets, granularity)
        elif self._foreach:
            foreach_retract_(params, targets, granularity)
        else:
            for p, target in zip(params, targets):
                p.copy_(reference.retract(p, target, granularity))

    def _retracts_this_step(self) -> bool:
        """Always with ``retract_every = 1``; with ``k > 1`` after steps ``k, 2k, ...`` only."""
        return self.param_groups[0][self._keys.retract_every] == 1 or self._retract_due()

    @torch._disable_dynamo  # torch.compiler.disable, but torch._dynamo is imported at the first call, not here
    def _retract_due(self) -> bool:
        """Read eagerly (off the step counter, which must not enter a compiled graph)."""
        first = self.param_groups[0]
        return (first[self._keys.steps] + 1) % first[self._keys.retract_every] == 0

    @torch._disable_dynamo  # torch.compiler.disable, but torch._dynamo is imported at the first call, not here
    def _count_step(self) -> None:
        """Count an applied step; switch when ``_should_switch()`` says so.

        Plain Python bookkeeping on a counter that changes every step: under ``torch.compile`` it runs eagerly
        (``torch.compiler.disable``) so that the compiled step does not depend on the counter's value.
        """
        steps = self.param_groups[0][self._keys.steps] + 1
        for group in self.param_groups:
            group[self._keys.steps] = steps
        if self._should_switch():
            self._switch()

    def _placeholders(
        self, group: dict[str, Any], constrained: list[tuple[int, torch.Tensor]], granularity: Granularity
    ) -> list[torch.Tensor | None]:
        """Targets before the switch: zeros shaped, typed and placed like the ones ``freeze()`` records
        (``None`` for the group's unconstrained tensors), so that DCP can load a checkpoint from either phase."""
        targets: list[torch.Tensor | None] = [None] * len(group["params"])
        for j, p in constrained:
            rows = self._rows([p], [p])[0] if granularity == "row" else p
            if is_dtensor(p):
                targets[j] = torch.zeros_like(reference.norms(rows, granularity))
            else:
                shape = () if granularity == "tensor" else (rows.shape[0],)
                targets[j] = torch.zeros(shape, dtype=compute_dtype(p.dtype), device=p.device)
        return targets

    def _check_checkpoint(self, saved_groups: list[dict[str, Any]] | None) -> None:
        """Refuse a checkpoint whose LAWN entries do not fit this optimizer; warn about options that differ.

        ``saved_groups``: the checkpoint's ``param_groups`` (``None`` if its layout has none: then the base
        optimizer's own ``load_state_dict`` judges it, and LAWN keeps its current entries).
        """
        if saved_groups is None:
            return
        k = self._keys
        _require(
            len(saved_groups) == len(self.param_groups),
            f"load_state_dict: the checkpoint has {len(saved_groups)} param groups, this optimizer has "
            f"{len(self.param_groups)}",
        )
        differ: dict[str, tuple[Any, Any]] = {}
        for saved, group, constrained in zip(saved_groups, self.param_groups, self._constrained):
            for key in k.options:
                if key in saved and saved[key] != group[key]:
                    differ.setdefault(key, (saved[key], group[key]))
            granularity = saved.get(k.granularity, group[k.granularity])
            _require(
                granularity in GRANULARITIES,
                f"load_state_dict: {k.granularity}={granularity!r} in the checkpoint; expected one of {GRANULARITIES}",
            )
            if k.targets not in saved:
                _require(
                    not saved.get(k.frozen, False),
                    f"load_state_dict: the checkpoint is past the switch but has no target norms "
                    f"({k.targets}) for {[self._names[p] for _, p in constrained]}",
                )
                continue
            targets = saved[k.targets]
            _require(
                isinstance(targets, list) and len(targets) == len(group["params"]),
                f"load_state_dict: {k.targets} in the checkpoint should be a list with one entry per parameter "
                f"of its group ({len(group['params'])})",
            )
            missing = []
            for j, p in constrained:
                target = targets[j]
                if target is None:
                    missing.append(self._names[p])
                    continue
                _require(
                    granularity != "row" or p.dim() >= 2,
                    f"load_state_dict: the checkpoint has granularity='row' for '{self._names[p]}', which has "
                    f"{p.dim()} dim(s)",
                )
                rows = self._rows([p], [p])[0]
                expected = () if granularity == "tensor" else (rows.shape[0],)
                _require(
                    isinstance(target, torch.Tensor) and tuple(target.shape) == expected,
                    f"load_state_dict: target of '{self._names[p]}' has shape "
                    f"{tuple(getattr(target, 'shape', ()))}, expected {expected} for granularity={granularity!r}",
                )
            _require(
                not missing or not saved.get(k.frozen, False),
                f"load_state_dict: the checkpoint is past the switch but has no target norm for {missing}",
            )
        if differ:
            listed = ", ".join(f"{key}={old!r} (constructor: {new!r})" for key, (old, new) in differ.items())
            warnings.warn(
                f"load_state_dict: the checkpoint's options differ from the constructor's: {listed}; the "
                "checkpoint's are used (as for lr). To change one, set it in every param group after loading.",
                UserWarning,
                stacklevel=3,
            )

    def _new_target(
        self, p: torch.Tensor, granularity: Granularity, fixed_target: float | None, target_scale: float
    ) -> torch.Tensor:
        """The target ``freeze()`` records for ``p``, or a ``ValueError`` naming ``p`` (and the row) if its norm
        is zero or not finite, or if the target leaves ``[MIN_TARGET, MAX_TARGET]``.

        The checks look at the global values on every rank (``full``), so all ranks raise or none does.
        """
        name = self._names[p]
        rows = self._rows([p], [p])[0] if granularity == "row" else p
        current = _checked_norms(name, rows, granularity)
        target = (current if fixed_target is None else torch.full_like(current, float(fixed_target))) * target_scale
        global_target = full(target)
        bad = (global_target < MIN_TARGET) | (global_target > MAX_TARGET)
        if bool(bad.any()):
            where = "" if global_target.dim() == 0 else f" (row {int(bad.nonzero()[0, 0])})"
            raise ValueError(
                f"freeze: '{name}'{where} would get target norm {float(global_target[bad].flatten()[0]):.3g}, "
                f"outside [{MIN_TARGET:g}, {MAX_TARGET:g}] where its fp32 norms stay exact; rescale the weight or "
                "choose target_scale / target_norm accordingly"
            )
        return target


def _engines(engine: NormConstraint | None) -> list[NormConstraint]:
    """``engine`` and the engines it wraps, outermost first."""
    chain = []
    while isinstance(engine, NormConstraint):
        chain.append(engine)
        engine = engine.base
    return chain


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
