"""WRS: weight rescaling instead of weight decay (Liu, Cui, Wan, Mao, Chan 2021, arXiv 2102.03497).

A weight ``W`` that feeds a batch normalization is scale-invariant: ``BN(c·W x) = BN(W x)`` for ``c > 0``.
SGD without weight decay lets ``‖W‖`` grow and keeps noise orthogonal to the input span; weight decay
shrinks it but interacts badly with momentum-based optimizers. WRS instead puts the weight back on the unit
sphere after the step, and uses no weight decay on it::

    W ← base_step(W);   W ← W · (1 / ‖W‖)          (every ``every`` steps; per tensor or per filter)

This is the constraint engine (:class:`lawn.NormConstraint`) with a fixed target of 1, no gradient
projection and no free phase, applied to the weights found by :func:`lawn.params_feeding_normalization`
(LAWN uses the same engine on the layers after the last normalization). The first rescale happens when the
wrapper is built, so BatchNorm's running statistics are only ever collected at the target norm.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from lawn._checks import is_int
from lawn.constraint.engine import NamedParams, NormConstraint
from lawn.constraint.reference import Granularity
from lawn.constraint.weights import named_weights


class WRS(NormConstraint):
    """Rescale ``params`` to ``target_norm`` after every ``every``-th step of ``base``.

    Args:
        base: any ``torch.optim.Optimizer`` holding ``params`` in groups with ``weight_decay=0`` (WRS
            replaces weight decay on these weights; other groups may keep theirs).
        params: the scale-invariant weights, plain or ``(name, tensor)`` pairs, e.g.
            ``lawn.params_feeding_normalization(model, x)`` (with ``per_channel=True`` for ``"row"``).
        every: rescale after steps ``every, 2·every, ...``; 1 (the paper's default) rescales at every step.
        granularity: ``"tensor"`` (``‖W‖ = 1``) or ``"row"`` (``‖W_i‖ = 1`` per output unit / filter).
        target_norm: the norm kept, 1 by default.
        foreach: multi-tensor kernels (default) or the per-tensor reference (``False``).
        fused: fp32 CPU weights (contiguous or channels-last) go through lawn's C++ kernel
            (see ``lawn.constraint.fused``).
    """

    def __init__(
        self,
        base: Optimizer,
        params: NamedParams,
        every: int = 1,
        granularity: Granularity = "tensor",
        *,
        target_norm: float = 1.0,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        if not is_int(every):
            raise TypeError(f"every: expected an int, got {every!r}")
        if every < 1:
            raise ValueError(f"every: must be >= 1, got {every}")
        if isinstance(base, Optimizer):
            params = params if isinstance(params, torch.Tensor) else list(params)  # read here and by the engine
            decay = {id(p): g.get("weight_decay", 0.0) for g in base.param_groups for p in g["params"]}
            for name, p, _, _ in named_weights(params, base):
                if decay.get(id(p), 0.0):
                    raise ValueError(
                        f"params: '{name}' is in a param group with weight_decay={decay[id(p)]}; WRS "
                        "replaces weight decay on these weights, so put them in a group with weight_decay=0"
                    )
        super().__init__(
            base,
            params,
            free_steps=0,
            granularity=granularity,
            project_gradient=False,
            target_norm=target_norm,
            foreach=foreach,
            retract_every=every,
            fused=fused,
        )

    @property
    def every(self) -> int:
        """Rescale interval in steps (stored in ``param_groups``, so it survives a checkpoint)."""
        return self.param_groups[0][self._keys.retract_every]
