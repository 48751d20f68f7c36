"""The models' normalization (field ``normalization``): ``"bn"`` or ``"mimicnorm"``.

- ``"bn"``: the models as written in :mod:`lawn.harness.models` (BatchNorm after every hidden layer).
- ``"mimicnorm"``: MimicNorm (Fei et al., AAAI 2021), via the library: the built model is converted by
  ``lawn.convert_to_mimicnorm(model, num_classes)`` (every BatchNorm → a per-channel bias, one
  ``BatchNorm1d(num_classes, affine=False)`` on the logits) and its convolution filters are kept zero-mean,
  ``W_i ← W_i − mean(W_i)``, at the start and after every optimizer step
  (``lawn.center_filters_after_step``). Models without convolutions (``mlp``) keep only the last BN.

With a BatchNorm on the logits nothing comes after the last normalization: the final homogeneous
sub-network is empty. So methods that constrain it (LAWN) are refused with ``"mimicnorm"``, and the run
logs no ``constrained_norm``. The ranking model (``ncf``) returns one score per pair, not class logits,
and is refused too.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

import lawn
from lawn.harness.config import RunConfig

NORMALIZATIONS = ("bn", "mimicnorm")


def check_config(c: RunConfig) -> None:
    """Raise ``ValueError`` naming the fields when ``c.normalization`` does not fit the model or method."""
    from lawn.harness.methods import METHODS
    from lawn.harness.models import MODELS

    if c.normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: expected one of {NORMALIZATIONS}, got {c.normalization!r}")
    if c.normalization == "bn":
        return
    if MODELS[c.model].task != "classification":
        raise ValueError(
            f"normalization: 'mimicnorm' puts a BatchNorm on the class logits; model {c.model!r} is a "
            f"{MODELS[c.model].task} model (one score per example): use normalization='bn'"
        )
    if METHODS[c.method].needs_final_homogeneous:
        raise ValueError(
            f"method: {c.method!r} constrains the final homogeneous sub-network (the layers after the last "
            "normalization), and normalization='mimicnorm' ends the model in a BatchNorm on the logits, "
            "which leaves it empty: use normalization='bn' or another method"
        )


def has_final_homogeneous(config: RunConfig) -> bool:
    """Whether the model keeps layers after its last normalization (false for MimicNorm's BN on logits)."""
    return config.normalization == "bn"


def convert(model: nn.Module, config: RunConfig, data: Any) -> nn.Module:
    """``model`` itself for ``"bn"``; its MimicNorm conversion (a deep copy) for ``"mimicnorm"``."""
    if config.normalization == "bn":
        return model
    return lawn.convert_to_mimicnorm(model, data.num_classes)


def attach(optimizer: Optimizer, model: nn.Module, config: RunConfig) -> None:
    """MimicNorm: centre ``model``'s filters now and after every step of the optimizer that moves them.

    The hook goes on the *base* optimizer when ``optimizer`` is a ``lawn.NormConstraint`` (LAWN, WRS).
    Its ``step()`` runs exactly once per training step under any wrapper, and centring before the
    wrapper's rescale keeps both properties (a rescale keeps a zero mean; centring after it would change
    the norm).
    """
    if config.normalization == "mimicnorm":
        base = optimizer.base if isinstance(optimizer, lawn.NormConstraint) else optimizer
        lawn.center_filters_after_step(base, model)
