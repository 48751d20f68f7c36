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

from torch.optim import Optimizer

from lawn.constraint.auto_switch import AUTO, AutoSwitch
from lawn.constraint.engine import NamedParams, NormConstraint
from lawn.constraint.keys import INNERMOST
from lawn.constraint.reference import Granularity

SWITCH_KEY = INNERMOST.switch_step  # where the innermost constraint records its switch step (lawn.constraint.keys)


class LAWN(NormConstraint):
    """LAWN around any optimizer: ``LAWN(torch.optim.Adam(model.parameters()), tail, free_steps=1000)``.

    Args:
        base: the optimizer to stack onto (SGD, Adam, LAMB, ...); it must hold every tensor of ``params``.
        params: the weights to constrain, plain or as ``(name, tensor)`` pairs, e.g.
            ``lawn.final_homogeneous_params(model, example_inputs)`` or ``lawn.all_layer_weights(model)`` (whose
            entries carry each weight's output dim and pruning mask), or ``(name, tensor, output_dim)`` triples.
        free_steps: applied optimizer steps before the norms are frozen; 0 freezes them now; ``"auto"`` (or a
            ``lawn.AutoSwitch`` with its own constants) switches when the constrained norms stop growing fast
            (:mod:`lawn.constraint.auto_switch`).
        granularity: ``"tensor"`` keeps ``‖W‖``; ``"row"`` keeps each ``‖W_i‖`` (output unit / conv filter); a unit
            that is zero and pruned by the weight's mask stays zero.
        project_gradient: project ``g`` onto the tangent space, ``g ← g − (⟨g, W⟩/‖W‖²) W``, before stepping.
        target_scale: targets are ``target_scale × ‖W‖ at the switch``; < 1 attenuates the logits further.
        foreach: multi-tensor kernels (default) or the per-tensor reference implementation (``False``).
        compiled: fuse the projection and the retraction with ``torch.compile`` (see ``lawn.constraint.compiled``).
        fused: ``None`` (default) fuses the whole constrained step of Adam/AdamW/SGD bases on CPU into one C++ kernel
            (see ``lawn.constraint.fused_step``); ``True`` also sends CUDA weights to the Triton step and other
            bases' fp32 CPU weights through the projection/retraction kernel (``lawn.constraint.fused``);
            ``False`` uses neither. Which path runs what: ``lawn.constraint.paths``.

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
        super().__init__(
            base,
            params,
            free_steps=free_steps,
            granularity=granularity,
            project_gradient=project_gradient,
            target_scale=target_scale,
            foreach=foreach,
            compiled=compiled,
            fused=fused,
        )

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
        recorded = group.get(self._keys.switch_step)
        if recorded is not None:
            return recorded
        setting = group[self._keys.free_steps]  # a checkpoint older than the key
        return setting if setting != AUTO else group[self._keys.steps]
