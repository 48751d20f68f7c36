"""Training methods stacked on a base optimizer: ``plain``, ``wd``, ``wrs``, ``ssi`` and ``lawn``.

A method says whether it trains with weight decay, how it wraps the base optimizer and what it adds to
the training loss. To add one, register a :class:`Method`; configs and sweeps pick it up by name.

- ``plain``: the base optimizer, no weight decay.
- ``wd``: the base optimizer with ``weight_decay`` (on all parameters).
- ``wrs``: the base optimizer, **no weight decay on any parameter**, wrapped by ``lawn.WRS`` over
  ``lawn.params_feeding_normalization(model, x)``: after every ``wrs_every``-th step each of those weights
  is rescaled to ``‖W‖ = 1`` (per tensor). WRS replaces weight decay on these scale-invariant weights;
  giving the other parameters (BN affine, biases, the last layer) weight decay too would make ``wrs`` two
  changes away from ``plain`` and give it a grid larger than the other methods'. So ``wrs`` is ``plain``
  plus the rescaling, as ``lawn`` is ``plain`` plus the constraint.
- ``ssi``: the base optimizer, no weight decay; the training loss gets
  ``+ ssi_lambda × lawn.scale_shift_invariant_penalty(layers)`` (the ``"geometric"`` form, on weight
  decay's scale: ``Σ_l ‖W_l‖²`` when the layers are balanced, never above it). ``layers`` is the model's
  ``Linear``/``Conv`` weights read as a chain, or the structure the model gives (:func:`ssi_layers`; the
  ResNet gives its residual branches). Biases, BN parameters and embeddings are not in the penalty.
- ``lawn``: the base optimizer (no weight decay) over all parameters, wrapped by ``lawn.LAWN`` over the
  final homogeneous sub-network's weights, with ``free_steps = round(free_fraction × total_steps)``.
- ``lawn_all``: ``lawn`` over ``lawn.all_layer_weights(model)`` (every weight with ≥ 2 dims) instead of the tail.
- ``lawn_auto``: ``lawn`` with the automatic switch, ``free_steps = lawn.AutoSwitch(threshold=auto_threshold,
  check_every=max(1, total_steps // auto_checks))``; ``free_fraction`` is not used.

With ``rewarmup_fraction > 0`` the LAWN methods train under ``lawn.LAWNSchedule`` (see
:mod:`lawn.harness.schedule`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

import lawn
from lawn.harness.config import RunConfig
from lawn.harness.optimizers import build_base_optimizer
from lawn.mimicnorm import LastBatchNorm

NamedParams = list[tuple[str, torch.Tensor]]


def constrained_params(model: nn.Module, example_inputs: Any) -> NamedParams:
    """The weights LAWN constrains: ``lawn.final_homogeneous_params(model, example_inputs)``.

    This is the harness's only point of contact with discovery.
    """
    return list(lawn.final_homogeneous_params(model, example_inputs))


@dataclass(frozen=True)
class Setup:
    """What a method's ``wrap`` may use besides the base optimizer."""

    model: nn.Module
    example_inputs: Any  # one training batch's inputs
    constrained: NamedParams  # the final homogeneous weights (empty under MimicNorm)
    config: RunConfig
    total_steps: int


Wrap = Callable[[Optimizer, Setup], Optimizer]
Penalty = Callable[[nn.Module, "RunConfig"], "torch.Tensor | None"]


@dataclass(frozen=True)
class Method:
    """A training method. ``wrap`` turns the base optimizer into the one stepped; ``penalty`` (called on
    every training batch) returns a term added to the loss, or ``None`` for none;
    ``needs_final_homogeneous``: the method acts on the final homogeneous sub-network, so the model must
    have one (not with ``normalization="mimicnorm"``)."""

    name: str
    uses_weight_decay: bool
    wrap: Wrap | None
    summary: str
    penalty: Penalty | None = None
    needs_final_homogeneous: bool = False


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def free_steps(config: RunConfig, total_steps: int) -> int:
    """LAWN's free phase: ``round(free_fraction × total_steps)`` optimizer steps."""
    return int(round(config.free_fraction * total_steps))


def auto_switch(config: RunConfig, total_steps: int) -> lawn.AutoSwitch:
    """``lawn_auto``'s switch: ``auto_checks`` checks over the run, at ``threshold = auto_threshold``."""
    return lawn.AutoSwitch(check_every=max(1, total_steps // config.auto_checks), threshold=config.auto_threshold)


def _lawn(base: Optimizer, setup: Setup) -> Optimizer:
    return _lawn_over(base, setup, setup.constrained, free_steps(setup.config, setup.total_steps))


def _lawn_all(base: Optimizer, setup: Setup) -> Optimizer:
    return _lawn_over(base, setup, lawn.all_layer_weights(setup.model), free_steps(setup.config, setup.total_steps))


def _lawn_auto(base: Optimizer, setup: Setup) -> Optimizer:
    return _lawn_over(base, setup, setup.constrained, auto_switch(setup.config, setup.total_steps))


def _lawn_over(
    base: Optimizer, setup: Setup, params: NamedParams, free: int | lawn.AutoSwitch
) -> Optimizer:
    config = setup.config
    return lawn.LAWN(
        base,
        params,
        free_steps=free,
        granularity=config.granularity,  # type: ignore[arg-type]
        project_gradient=config.project_gradient,
        target_scale=config.target_scale,
    )


def _wrs(base: Optimizer, setup: Setup) -> Optimizer:
    feeding = lawn.params_feeding_normalization(setup.model, setup.example_inputs)
    if not feeding:
        raise ValueError(f"method 'wrs': model {setup.config.model!r} has no weight feeding a normalization")
    return lawn.WRS(base, feeding, every=setup.config.wrs_every)


def ssi_layers(model: nn.Module) -> nn.Module | list[Any]:
    """What ``lawn.scale_shift_invariant_penalty`` reads for ``model``: the model's own ``ssi_layers()``
    structure if it defines one (looking through MimicNorm's wrapper), else the model (its ``Linear`` /
    ``Conv`` layers in registration order, read as a chain)."""
    inner = model.body if isinstance(model, LastBatchNorm) else model
    structure = getattr(inner, "ssi_layers", None)
    return structure() if callable(structure) else model


def _ssi_penalty(model: nn.Module, config: RunConfig) -> torch.Tensor | None:
    if config.ssi_lambda == 0.0:
        return None
    return config.ssi_lambda * lawn.scale_shift_invariant_penalty(ssi_layers(model))


register_method(Method("plain", False, None, "the base optimizer, no weight decay"))
register_method(Method("wd", True, None, "the base optimizer with its weight_decay"))
register_method(
    Method("wrs", False, _wrs, "WRS: weights feeding a normalization rescaled to norm 1, no weight decay")
)
register_method(
    Method(
        "ssi",
        False,
        None,
        "loss + ssi_lambda × the scale-shift-invariant penalty, no weight decay",
        penalty=_ssi_penalty,
    )
)
register_method(
    Method(
        "lawn",
        False,
        _lawn,
        "LAWN on the final homogeneous weights, no weight decay",
        needs_final_homogeneous=True,
    )
)
register_method(Method("lawn_all", False, _lawn_all, "LAWN on every weight with >= 2 dims, no weight decay"))
register_method(
    Method(
        "lawn_auto",
        False,
        _lawn_auto,
        "LAWN on the final homogeneous weights, automatic switch, no weight decay",
        needs_final_homogeneous=True,
    )
)


def build_optimizer(
    config: RunConfig,
    model: nn.Module,
    constrained: NamedParams,
    lr: float,
    total_steps: int,
    *,
    example_inputs: Any,
) -> Optimizer:
    """Base optimizer over all of ``model``'s parameters at ``lr``, wrapped by ``config.method``."""
    method = METHODS[config.method]
    base = build_base_optimizer(
        config.optimizer,
        model.parameters(),
        lr=lr,
        weight_decay=config.weight_decay if method.uses_weight_decay else 0.0,
        momentum=config.momentum,
    )
    if method.wrap is None:
        return base
    return method.wrap(base, Setup(model, example_inputs, constrained, config, total_steps))
