"""LAWN: Logit Attenuating Weight Normalization (Gupta et al., arXiv 2108.05839).

Train freely for ``free_steps`` steps; then freeze the norms of the final homogeneous sub-network's weights
(the layers after the last normalization, up to the logits) and keep them: at every later step the gradient
is projected onto the tangent space of each norm sphere, the base optimizer steps, and the weights are
rescaled back onto the sphere. With the weight norms fixed, the logits cannot grow without bound, so the
loss does not collapse to ~0 and the network keeps moving.
"""

from __future__ import annotations

from torch.optim import Optimizer

from lawn.constraint.engine import NamedParams, NormConstraint
from lawn.constraint.reference import Granularity


class LAWN(NormConstraint):
    """LAWN around any optimizer: ``LAWN(torch.optim.Adam(model.parameters()), tail, free_steps=1000)``.

    Args:
        base: the optimizer to stack onto (SGD, Adam, LAMB, ...); it must hold every tensor of ``params``.
        params: the weights to constrain, plain or as ``(name, tensor)`` pairs, e.g.
            ``lawn.final_homogeneous_params(model, example_inputs)``.
        free_steps: applied optimizer steps before the norms are frozen; 0 freezes them now.
        granularity: ``"tensor"`` keeps ``‖W‖``; ``"row"`` keeps each ``‖W_i‖`` (output unit / conv filter).
        project_gradient: project ``g`` onto the tangent space, ``g ← g − (⟨g, W⟩/‖W‖²) W``, before stepping.
        target_scale: targets are ``target_scale × ‖W‖ at the switch``; < 1 attenuates the logits further.
        foreach: multi-tensor kernels (default) or the per-tensor reference implementation (``False``).
        compiled: fuse the projection and the retraction with ``torch.compile`` (see ``lawn.constraint.compiled``).
        fused: ``None`` (default) fuses the whole constrained step of Adam/AdamW/SGD bases on CPU into one C++ kernel
            (see ``lawn.constraint.fused_step``); ``True`` also sends other bases' fp32 CPU weights through the
            projection/retraction kernel (``lawn.constraint.fused``); ``False`` uses neither.

    ``opt.phase`` is ``"free"`` or ``"constrained"``; ``opt.freeze()`` switches now.
    """

    def __init__(
        self,
        base: Optimizer,
        params: NamedParams,
        free_steps: int = 1000,
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
