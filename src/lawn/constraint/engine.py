"""The constraint engine: keep chosen weights on norm spheres around any ``torch.optim.Optimizer``.

``NormConstraint(base, params, ...)`` wraps ``base`` and, once *frozen*, does at every step::

    g ← g − (⟨g, w⟩ / ‖w‖²) · w        (tangent projection, optional)
    base.step()
    w ← w · (target / ‖w‖)              (retraction onto the sphere)

for each selected weight ``w`` (per tensor, or per row = per output unit). Before the switch it changes
nothing. Targets are either the norms recorded at the switch (LAWN) or a fixed value (WRS), times
``target_scale``. :class:`lawn.LAWN` is this engine with recorded targets.

How a step happens, file by file (read in this order): :mod:`~lawn.constraint.reference` states the math one
tensor at a time; :mod:`~lawn.constraint.weights` says which tensors and their rows; :mod:`~lawn.constraint.options`
checks the options; :mod:`~lawn.constraint.switch` decides when to switch; :mod:`~lawn.constraint.targets` records
the targets at the switch; :mod:`~lawn.constraint.paths` picks the code that runs each step (reference, foreach,
compiled, the C++ and Triton fused steps, the C++ projection/retraction kernel); this file runs it.

**Where the state lives.** Everything the engine keeps is in ``param_groups`` (:mod:`~lawn.constraint.keys`),
which every optimizer and every wrapper (``ZeroRedundancyOptimizer``, ``Lookahead``, DCP, Lightning) saves and
restores as it is: the scalars (``lawn_steps``, ``lawn_frozen``, ``lawn_switch_step``, the options, the switch
rule's memory) and the target norms, ``group["lawn_target_norms"]``, a list aligned with ``group["params"]`` (a 0-d
or ``(rows,)`` tensor, fp32 or fp64 like ``compute_dtype``, for a constrained tensor; ``None`` for the others;
zeros until the switch). Nothing is written into ``state[p]``, so the base's lazy state initialisation is never
disturbed and a LAWN checkpoint loads into the plain base optimizer (which just carries the extra group entries
along). Loading a checkpoint: :mod:`~lawn.constraint.checkpoint`.

**Several constraints on one optimizer** (WRS on the weights feeding BatchNorm, LAWN on the tail): nest them,
``LAWN(WRS(base, ...), tail, ...)``. Each level keeps every entry under its own prefix (``lawn_`` for the
innermost, ``lawn2_``, ``lawn3_``, ... outwards), so neither sees the other's state and the checkpoint holds both.
Two wrappers side by side on the same base would both step it: refused.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from lawn.constraint import checkpoint, fused_step, switch, targets
from lawn.constraint.keys import INNERMOST, Keys
from lawn.constraint.options import Options, check_base, group_options
from lawn.constraint.paths import Paths
from lawn.constraint.reference import Granularity
from lawn.constraint.weights import Entry, entries_per_group

#: where the innermost engine keeps its target norms in each param group (nested engines: ``lawn2_...``)
TARGETS_KEY = INNERMOST.targets

NamedParams = Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | Iterable[tuple[str, torch.Tensor, int]]

#: base optimizer → the engine wrapping it (two engines side by side on one base would both step it)
_WRAPPED: weakref.WeakKeyDictionary[Optimizer, weakref.ref] = weakref.WeakKeyDictionary()


class NormConstraint(Optimizer):
    """Wrap ``base`` so that the tensors in ``params`` keep a fixed norm after the switch.

    Args:
        base: any ``torch.optim.Optimizer`` that holds every tensor of ``params`` (or another
            ``NormConstraint``, to combine two constraints; see the module docstring). Optimizers that
            re-evaluate the closure themselves (L-BFGS, SAM) are refused.
        params: the constrained tensors: plain, as ``(name, tensor)`` pairs (names appear in errors), as
            ``(name, tensor, output_dim)`` triples, or as the :class:`lawn.constraint.NamedWeight` entries
            discovery and :func:`lawn.all_layer_weights` return (they carry each weight's output dim and mask).
        free_steps: the switch rule: applied steps before the switch (0 switches now), ``"auto"`` or a
            :class:`lawn.AutoSwitch` (:mod:`lawn.constraint.switch`).
        granularity: ``"tensor"`` (one norm per tensor) or ``"row"`` (one per output unit: all dims but the
            output dim reduced; the output dim comes with the entry, or from
            :func:`lawn.constraint.set_output_dim`, else it is 0). Rows that are zero and pruned by the weight's
            mask are skipped (:mod:`lawn.constraint.weights`).
        project_gradient: project gradients onto the sphere's tangent space before ``base.step()``.
        target_norm: ``None`` records the norms at the switch; a number fixes every target to it.
        target_scale: targets are multiplied by this (< 1 attenuates further); in ``[1e-6, 1e6]``.
        foreach: multi-tensor kernels (default) or the per-tensor reference (``False``).
        retract_every: retract after steps ``k, 2k, ...`` only (WRS's interval); 1 retracts after every step.
        compiled: fuse the projection and the retraction with ``torch.compile`` (compiles at the first
            constrained step; falls back to the foreach path, with a warning, if compiling fails).
        fused: ``None`` (default): the whole constrained step of ``torch.optim.Adam``/``AdamW``/``SGD`` bases on
            CPU fp32/bf16 tensors in one C++ kernel (:mod:`lawn.constraint.fused_step`), the rest on the foreach
            path. ``True``: also CUDA tensors in the Triton kernels (opt-in until a GPU run meets the goals in
            docs/performance_gpu.md) and other fp32 CPU tensors' projection and retraction in C++
            (:mod:`lawn.constraint.fused`). ``False``: neither. Built at first use (about a minute, then cached);
            if building fails, one warning and the foreach path. Which path runs what: :mod:`lawn.constraint.paths`.

    Target norms must lie in ``[1e-12, 1e12]`` (checked at the switch). Methods of the base optimizer that
    LAWN does not define (ScheduleFree's ``train()`` / ``eval()``, ...) are forwarded to it.
    """

    def __init__(
        self,
        base: Optimizer,
        params: NamedParams,
        *,
        free_steps: int | str | switch.AutoSwitch,
        granularity: Granularity = "tensor",
        project_gradient: bool = True,
        target_norm: float | None = None,
        target_scale: float = 1.0,
        foreach: bool | None = None,
        retract_every: int = 1,
        compiled: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_base(base, _wrapper_of(base))
        rule = switch.resolve(free_steps)
        options = Options(
            granularity=granularity,
            project_gradient=project_gradient,
            target_norm=target_norm,
            target_scale=target_scale,
            retract_every=retract_every,
            foreach=foreach,
            compiled=compiled,
            fused=fused,
        )
        inner = base if isinstance(base, NormConstraint) else None
        self._depth = 0 if inner is None else inner._depth + 1
        self._keys = keys = Keys.at_depth(self._depth)
        taken = {id(e.tensor): type(c).__name__ for c in _engines(inner) for e in c._entries()}
        self._constrained = entries_per_group(base, params, granularity, taken)
        self.base, self.defaults = base, base.defaults
        self._paths = Paths(base, options)
        self._switch_failed = False  # a switch raised: the next step() retries it before changing anything
        self._init_hooks()
        if rule.at_construction:  # we freeze below: refuse bad norms before anything is written
            for entry in self._entries():
                targets.new_target(entry, granularity, target_norm, target_scale)
        self._patch_step_function()
        entries = {
            **options.entries(keys),
            **rule.entries(keys, self._tensors()),
            keys.steps: 0,
            keys.frozen: False,
            keys.switch_step: None,
        }
        for key, value in entries.items():
            self.defaults.setdefault(key, value)
            for group in base.param_groups:
                group[key] = value
        for group, constrained in zip(base.param_groups, self._constrained):
            group[keys.targets] = targets.placeholders(group, constrained, granularity)
        _WRAPPED[base] = weakref.ref(self)
        if rule.at_construction:
            self.freeze()

    def _init_hooks(self) -> None:
        """The hook tables ``Optimizer.__init__`` would create (it is not called: the base holds the state)."""
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._warned_capturable_if_run_uncaptured = True

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
        return f"{type(self).__name__}({self.phase}, {len(self._entries())} constrained tensors, base={self.base!r})"

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add an (unconstrained) group to the base optimizer; it inherits the constraint's counters and options."""
        first = self.param_groups[0]
        self.base.add_param_group(param_group)
        for key in self._keys.scalars:
            if key in first:
                self.param_groups[-1][key] = first[key]
        self.param_groups[-1][self._keys.targets] = [None] * len(self.param_groups[-1]["params"])
        self._constrained.append([])

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's checkpoint (the constraint's entries ride in its ``param_groups``), hooks run."""
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

        The constraint's entries are checked before anything changes; then the base optimizer loads the
        checkpoint and the constraint reads its entries back from ``param_groups`` (what wins:
        :mod:`lawn.constraint.checkpoint`). Targets stay fp32 (fp64 for fp64 weights).
        """
        state_dict = state_dict.copy() if isinstance(state_dict, dict) else state_dict
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        checkpoint.check(checkpoint.find_param_groups(state_dict), self.param_groups, self._constrained, self._keys)
        kept = checkpoint.current(self.param_groups, self._keys)
        self.base.load_state_dict(state_dict)
        checkpoint.restore(self.param_groups, self._constrained, kept, self._keys)
        first = self.param_groups[0]  # a switch that was due and failed is retried at the next step
        rule = switch.from_group(first, self._keys)
        self._switch_failed = not first[self._keys.frozen] and rule.overdue(first[self._keys.steps])
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # ----------------------------------------------------------------- the constraint's own API
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
        return [(entry.name, entry.tensor) for entry in self._entries()]

    @property
    def target_norms(self) -> dict[str, torch.Tensor]:
        """``name → target norm`` (fp32, fp64 for fp64 weights; empty before the switch)."""
        if self.phase == "free":
            return {}
        return {
            entry.name: group[self._keys.targets][entry.index]
            for group, constrained in zip(self.param_groups, self._constrained)
            for entry in constrained
        }

    @torch.no_grad()
    def freeze(self) -> None:
        """Switch to the constrained phase now: record each target norm, then keep it. After the switch: no-op.

        Raises ``ValueError`` naming the tensor (and row) whose norm is zero or not finite (and not pruned), or
        whose target would leave ``[1e-12, 1e12]``; nothing is changed then.
        """
        k = self._keys
        if self.param_groups[0][k.frozen]:
            return
        new = [
            [targets.new_target(e, group[k.granularity], group[k.fixed_target], group[k.target_scale]) for e in entries]
            for group, entries in zip(self.param_groups, self._constrained)
        ]
        for group, entries, recorded in zip(self.param_groups, self._constrained, new):
            for entry, target in zip(entries, recorded):
                group[k.targets][entry.index] = target
            if group[k.fixed_target] is not None or group[k.target_scale] != 1.0:
                self._retract(group, entries)
        for group in self.param_groups:
            group[k.frozen] = True
            group[k.switch_step] = group[k.steps]
        self._switch_failed = False

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Project (if constrained), ``base.step()``, retract (if constrained); return the closure's loss."""
        self._refuse_invalid_options()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._refuse_sparse_gradients()
        if self._switch_failed:  # retry a switch that failed: it raises again before anything is changed
            self._switch_now()
        self._constrained_step()
        self._count_step()
        return loss

    # ----------------------------------------------------------------- one step
    def _constrained_step(self) -> None:
        """The step itself: project → ``base.step()`` → retract (the only place the base optimizer steps).

        Under torch.compile, the code after base.step() is a separate resume function. Reading the phase from
        param_groups there (base.step() does not change it) and keeping loop variables out of this frame make it
        one function in both phases that has seen the step counter change before the switch: the switch then
        recompiles each compiled function once, and the counter never again.
        """
        if self.param_groups[0][self._keys.frozen] and self._fused_step():
            return
        if self.param_groups[0][self._keys.frozen]:
            self._project_all()
        self.base.step()
        if self.param_groups[0][self._keys.frozen] and self._retracts_this_step():
            self._retract_all()

    def _fused_step(self) -> bool:
        """The constrained step with the fused kernels taking what they can (:mod:`lawn.constraint.paths`, asked
        once per step group); ``False`` (nothing done) if they take nothing."""
        if not self._paths.fuses_steps():
            return False
        k = self._keys
        plans = [
            self._paths.plan(group, entries, self.state, group[k.granularity])
            for group, entries in zip(self.param_groups, self._constrained)
        ]
        if not any(plan.fused for plan in plans):
            return False
        retract = self._retracts_this_step()
        for group, plan in zip(self.param_groups, plans):
            if group[k.project_gradient]:
                self._project(group, plan.rest)
        hidden = [(e.tensor, e.tensor.grad) for plan in plans for run in plan.fused for e in run.entries]
        for p, _ in hidden:
            p.grad = None  # the base's own step skips tensors without a gradient
        try:
            self.base.step()
        finally:
            for p, g in hidden:
                p.grad = g
        for group, plan in zip(self.param_groups, plans):
            for run in plan.fused:
                fused_step.step(
                    run.kernel,
                    run.kind,
                    [e.tensor for e in run.entries],
                    [self.state[e.tensor] for e in run.entries],
                    group,
                    [group[k.targets][e.index] for e in run.entries] if retract else None,
                    project=bool(group[k.project_gradient]),
                    per_row=group[k.granularity] == "row",
                    decoupled=run.decoupled,
                )
        if retract:
            for group, plan in zip(self.param_groups, plans):
                self._retract(group, plan.rest)
        return True

    def _project_all(self) -> None:
        for group, entries in zip(self.param_groups, self._constrained):
            if group[self._keys.project_gradient]:
                self._project(group, [e for e in entries if e.tensor.grad is not None])

    def _retract_all(self) -> None:
        for group, entries in zip(self.param_groups, self._constrained):
            self._retract(group, [e for e in entries if e.tensor.grad is not None])

    def _project(self, group: dict[str, Any], entries: list[Entry]) -> None:
        """``g ← g − (⟨g, w⟩ / ‖w‖²) · w``; ‖w‖ is computed every time (a weight written through ``.data``,
        e.g. by ``vector_to_parameters`` or an EMA swap, cannot be detected, so its norm is never assumed)."""
        if not entries:
            return
        granularity = group[self._keys.granularity]
        grads, params = [e.tensor.grad for e in entries], [e.tensor for e in entries]
        if granularity == "row":
            grads = [e.rows(g) for e, g in zip(entries, grads)]
            params = [e.rows(p) for e, p in zip(entries, params)]
        self._paths.project(grads, params, granularity)

    def _retract(self, group: dict[str, Any], entries: list[Entry]) -> None:
        if not entries:
            return
        granularity = group[self._keys.granularity]
        params = [e.rows(e.tensor) if granularity == "row" else e.tensor for e in entries]
        self._paths.retract(params, [group[self._keys.targets][e.index] for e in entries], granularity)

    def _retracts_this_step(self) -> bool:
        """Always with ``retract_every = 1``; with ``k > 1`` after steps ``k, 2k, ...`` only."""
        return self.param_groups[0][self._keys.retract_every] == 1 or self._retract_due()

    @torch._disable_dynamo  # torch.compiler.disable, but torch._dynamo is imported at the first call, not here
    def _retract_due(self) -> bool:
        """Read eagerly (off the step counter, which must not enter a compiled graph)."""
        first = self.param_groups[0]
        return (first[self._keys.steps] + 1) % first[self._keys.retract_every] == 0

    # ----------------------------------------------------------------- counting and switching
    @torch._disable_dynamo  # torch.compiler.disable, but torch._dynamo is imported at the first call, not here
    def _count_step(self) -> None:
        """Count an applied step; switch when the switch rule says so.

        Plain Python bookkeeping on a counter that changes every step: under ``torch.compile`` it runs eagerly
        (``torch.compiler.disable``) so that the compiled step does not depend on the counter's value.
        """
        steps = self.param_groups[0][self._keys.steps] + 1
        for group in self.param_groups:
            group[self._keys.steps] = steps
        if self._should_switch():
            self._switch_now()

    def _should_switch(self) -> bool:
        """Whether to switch to the constrained phase now (asked after each counted step): the switch rule that
        ``param_groups`` holds says so (read there, so that a rule set by hand in every group is followed)."""
        first = self.param_groups[0]
        if first[self._keys.frozen]:
            return False
        rule = switch.from_group(first, self._keys)
        return rule.due(self.param_groups, self._keys, first[self._keys.steps], self._tensors())

    def _switch_now(self) -> None:
        """``freeze()``; if it raises, every later ``step()`` retries it first and so changes nothing."""
        self._switch_failed = True
        self.freeze()

    def _refuse_invalid_options(self) -> None:
        """Options set by hand in ``param_groups`` (how a resumed run changes one) are checked before anything moves,
        as the constructor checks them; again only when a value changed, so a step pays one tuple comparison."""
        k = self._keys
        values = tuple(group.get(key) for group in self.param_groups for key in k.options)
        if values == getattr(self, "_checked_options", None):
            return
        for i, group in enumerate(self.param_groups):
            try:
                group_options(group, k)
                switch.from_group(group, k)
            except (TypeError, ValueError, KeyError) as err:
                raise type(err)(
                    f"step: param group {i} holds an invalid {k.prefix}* option ({err}); nothing was changed: set a "
                    "valid value in every param group"
                ) from None
        self._checked_options = values

    def _refuse_sparse_gradients(self) -> None:
        for entry in self._entries():
            grad = entry.tensor.grad
            if grad is not None and grad.is_sparse:
                raise ValueError(f"step: '{entry.name}' has a sparse gradient; LAWN needs dense gradients")

    def _entries(self) -> list[Entry]:
        return [entry for entries in self._constrained for entry in entries]

    def _tensors(self) -> list[torch.Tensor]:
        return [entry.tensor for entry in self._entries()]


def _wrapper_of(base: Any) -> NormConstraint | None:
    """The live constraint already wrapping ``base`` (``None``: none, or ``base`` is not an optimizer)."""
    ref = _WRAPPED.get(base) if isinstance(base, Optimizer) else None
    return ref() if ref is not None else None


def _engines(engine: Any) -> list[NormConstraint]:
    """``engine`` and the engines it wraps, outermost first."""
    chain = []
    while isinstance(engine, NormConstraint):
        chain.append(engine)
        engine = engine.base
    return chain
