"""LAWN: Logit Attenuating Weight Normalization (Gupta et al., arXiv 2108.05839).

Train freely for ``free_steps`` steps; then freeze the norms of the final homogeneous sub-network's weights
(the layers after the last normalization, up to the logits) and keep them: at every later step the gradient
is projected onto the tangent space of each norm sphere, the base optimizer steps, and the weights are
rescaled back onto the sphere. With the weight norms fixed, the logits cannot grow without bound, so the
loss does not collapse to ~0 and the network keeps moving.

The switch comes after a fixed number of steps, or by itself (``free_steps="auto"``, see
:mod:`lawn.constraint.auto_switch`); ``opt.switch_step`` says when, and :class:`lawn.LAWNSchedule` follows it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from lawn.constraint import auto_switch
from lawn.constraint.auto_switch import AutoSwitch
from lawn.constraint.engine import NamedParams, NormConstraint
from lawn.constraint.reference import Granularity

SWITCH_KEY = "lawn_switch_step"
_NEVER = 2**62  # the engine's step count for an automatic switch (the rule decides, see _should_switch)


class LAWN(NormConstraint):
    """LAWN around any optimizer: ``LAWN(torch.optim.Adam(model.parameters()), tail, free_steps=1000)``.

    Args:
        base: the optimizer to stack onto (SGD, Adam, LAMB, ...); it must hold every tensor of ``params``.
        params: the weights to constrain, plain or as ``(name, tensor)`` pairs, e.g.
            ``lawn.final_homogeneous_params(model, example_inputs)``.
        free_steps: applied optimizer steps before the norms are frozen; 0 freezes them now; ``"auto"`` (or a
            ``lawn.AutoSwitch`` with its own constants) switches when the constrained norms stop growing fast
            (:mod:`lawn.constraint.auto_switch`).
        granularity: ``"tensor"`` keeps ``‖W‖``; ``"row"`` keeps each ``‖W_i‖`` (output unit / conv filter).
        project_gradient: project ``g`` onto the tangent space, ``g ← g − (⟨g, W⟩/‖W‖²) W``, before stepping.
        target_scale: targets are ``target_scale × ‖W‖ at the switch``; < 1 attenuates the logits further.
        foreach: multi-tensor kernels (default) or the per-tensor reference implementation (``False``).
        compiled: fuse the projection and the retraction with ``torch.compile`` (see ``lawn.constraint.compiled``).
        fused: ``None`` (default) fuses the whole constrained step of Adam/AdamW/SGD bases on CPU into one C++ kernel
            (see ``lawn.constraint.fused_step``); ``True`` also sends other bases' fp32 CPU weights through the
            projection/retraction kernel (``lawn.constraint.fused``); ``False`` uses neither.

    ``opt.phase`` is ``"free"`` or ``"constrained"``; ``opt.freeze()`` switches now; ``opt.switch_step`` is the
    number of applied steps before the switch (``None`` before it).
    """

    def __init__(
        self,
        base: Optimizer,
        params: NamedParams,
        free_steps: int | str | AutoSwitch = 1000,
        granularity: Granularity = "tensor",
        project_gradient: bool = True,
        *,
        target_scale: float = 1.0,
        foreach: bool | None = None,
        compiled: bool = False,
        fused: bool | None = None,
    ) -> None:
        auto = auto_switch.resolve(free_steps)
        super().__init__(
            base,
            params,
            free_steps=_NEVER if auto is not None else free_steps,  # type: ignore[arg-type]
            granularity=granularity,
            project_gradient=project_gradient,
            target_scale=target_scale,
            foreach=foreach,
            compiled=compiled,
            fused=fused,
        )
        extra: dict[str, Any] = {SWITCH_KEY: self.param_groups[0].get(SWITCH_KEY)}
        if auto is not None:
            extra[self._keys.free_steps] = auto_switch.AUTO
            extra.update(auto_switch.options(auto, self._all_constrained()))
        for key, value in extra.items():
            self.defaults[key] = value
            for group in self.param_groups:
                group[key] = value

    @property
    def free_steps_setting(self) -> int | str:
        """``free_steps`` as configured: a step count, or ``"auto"``."""
        return self.param_groups[0][self._keys.free_steps]

    @property
    def switch_step(self) -> int | None:
        """Applied steps before the switch (fixed or automatic); ``None`` while free."""
        group = self.param_groups[0]
        if not group[self._keys.frozen]:
            return None
        recorded = group.get(SWITCH_KEY)
        return recorded if recorded is not None else group[self._keys.free_steps]  # a checkpoint older than the key

    def freeze(self) -> None:
        """Switch to the constrained phase now (see ``NormConstraint.freeze``) and record ``switch_step``."""
        was_free = not self.param_groups[0][self._keys.frozen]
        super().freeze()
        if was_free:
            for group in self.param_groups:
                group[SWITCH_KEY] = group[self._keys.steps]

    def _should_switch(self) -> bool:
        """The engine's rule (after ``free_steps``), or with ``free_steps="auto"`` the automatic one."""
        first = self.param_groups[0]
        if first[self._keys.free_steps] != auto_switch.AUTO:
            return super()._should_switch()
        if first[self._keys.frozen]:
            return False
        return auto_switch.switch_due(self.param_groups, first[self._keys.steps], self._all_constrained())

    def _all_constrained(self) -> list[torch.Tensor]:
        return [p for _, p in self.constrained_parameters]
