"""Training methods stacked on a base optimizer: ``plain``, ``wd``, ``wrs``, ``ssi`` and ``lawn``.

A method says whether it trains with weight decay, how it wraps the base optimizer and what it adds to
the training loss. To add one, register a :class:`Method`; configs and sweeps pick it up by name.

- ``plain``: the base optimizer, no weight decay.
- ``wd``: the base optimizer with ``weight_decay`` (on all parameters).
- ``wrs``: the base optimizer, **no weight decay on any parameter**, wrapped by ``lawn.WRS`` over
  ``lawn.params_feeding_normalization(model, x)``: after every ``wrs_every``-th step each of those weights
  is rescaled to ``‖W‖ = 1`` (per tensor; ``granularity = "row"``: each output unit's ``‖W_i‖ = 1``, the
  per-filter rescale). WRS replaces weight decay on these scale-invariant weights; giving the other
  parameters (BN affine, biases, the last layer) weight decay too would make ``wrs`` two changes away from
  ``plain`` and give it a grid larger than the other methods'. So ``wrs`` is ``plain`` plus the rescaling, as
  ``lawn`` is ``plain`` plus the constraint.
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

- ``afan``: the base optimizer, no weight decay; the training loss is ``lawn.AFAN``'s (adversarial feature
  augmentation at module ``afan_layer``; ``"auto"`` picks the model's entry in ``AFAN_LAYERS``, after its
  first stage as in the released CIFAR run), with the ``afan_*`` fields as its options
  (``afan_normalize="none"`` is ``normalize=None``). ``train_loss`` logs the clean loss.
- ``input_adv``: the base optimizer, no weight decay; the training loss is ``lawn.afan.InputAdversarial``'s,
  ``(1 − w) ℓ(f(x), y) + w ℓ(f(x + δ), y)`` with ``δ`` from PGD on the input (the AdvProp-style control for
  A-FAN), read from the same fields: ``afan_steps``, ``afan_step_size``, ``afan_eps``, ``afan_random_start``,
  ``afan_adv_weight`` (``w``) and ``afan_bn``, in input units (standardized pixels). ``train_loss`` logs the clean
  loss; ``passes_per_step`` counts whole-network passes, ``afan_steps + 2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

import lawn
from lawn.afan import InputAdversarial
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
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (inputs, targets, the task's loss) → (the loss to train on, the clean logits, the clean data loss)
StepLoss = Callable[[Any, torch.Tensor, Criterion], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Method:
    """A training method. ``wrap`` turns the base optimizer into the one stepped; ``penalty`` (called on
    every training batch) returns a term added to the loss, or ``None`` for none;
    ``needs_final_homogeneous``: the method acts on the final homogeneous sub-network, so the model must
    have one (not with ``normalization="mimicnorm"``); ``step_loss`` (called once per run with the model
    and config) returns the function that computes a training batch's loss in place of
    ``task.loss(model(x), y)``, or ``None``; ``passes_after_split`` counts its passes per step (cost)."""

    name: str
    uses_weight_decay: bool
    wrap: Wrap | None
    summary: str
    penalty: Penalty | None = None
    needs_final_homogeneous: bool = False
    step_loss: Callable[[nn.Module, RunConfig], StepLoss] | None = None


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


def _lawn_over(base: Optimizer, setup: Setup, params: NamedParams, free: int | lawn.AutoSwitch) -> Optimizer:
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
    row = setup.config.granularity == "row"  # each output unit's weights to unit norm (the per-filter rescale)
    feeding = lawn.params_feeding_normalization(setup.model, setup.example_inputs, per_channel=row)
    if not feeding:
        raise ValueError(f"method 'wrs': model {setup.config.model!r} has no weight feeding a normalization")
    granularity = setup.config.granularity
    return lawn.WRS(base, feeding, every=setup.config.wrs_every, granularity=granularity)  # type: ignore[arg-type]


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
register_method(Method("wrs", False, _wrs, "WRS: weights feeding a normalization rescaled to norm 1, no weight decay"))
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


# ---------------------------------------------------------------------- A-FAN
AFAN_LAYERS = {"resnet": "stages.0", "vgg": "features.6", "mlp": "body.3", "cnn1d": "features.2", "ncf": "body.2"}
AFAN_NORMALIZE = ("none", "position", "batch")


def afan_layer(config: RunConfig, model: nn.Module) -> str:
    """``afan_layer``, with ``"auto"`` read from ``AFAN_LAYERS`` (looking through MimicNorm's wrapper)."""
    if config.afan_layer != "auto":
        return config.afan_layer
    name = AFAN_LAYERS[config.model]
    return f"body.{name}" if isinstance(model, LastBatchNorm) else name


def build_afan(model: nn.Module, config: RunConfig) -> lawn.AFAN:
    """``lawn.AFAN`` over ``model`` with the config's ``afan_*`` options."""
    return lawn.AFAN(
        model,
        afan_layer(config, model),
        steps=config.afan_steps,
        step_size=config.afan_step_size,
        eps=config.afan_eps,
        random_start=config.afan_random_start,
        strengths=config.afan_strengths,
        normalize=None if config.afan_normalize == "none" else config.afan_normalize,  # type: ignore[arg-type]
        adv_weight=config.afan_adv_weight,
        bn=config.afan_bn,  # type: ignore[arg-type]
        direction=config.afan_direction,  # type: ignore[arg-type]
    )


def _afan_step_loss(model: nn.Module, config: RunConfig) -> StepLoss:
    afan = build_afan(model, config)

    def step_loss(inputs: Any, targets: torch.Tensor, criterion: Criterion) -> Any:
        total, pieces = afan.loss(inputs, targets, criterion)
        return total, pieces.output, pieces.clean_loss

    step_loss.passes_after_split = 1 + afan.extra_passes  # type: ignore[attr-defined]
    return step_loss


def _input_adv_step_loss(model: nn.Module, config: RunConfig) -> StepLoss:
    adversary = InputAdversarial(
        model,
        steps=config.afan_steps,
        step_size=config.afan_step_size,
        eps=config.afan_eps,
        random_start=config.afan_random_start,
        adv_weight=config.afan_adv_weight,
        bn=config.afan_bn,  # type: ignore[arg-type]
    )

    def step_loss(inputs: Any, targets: torch.Tensor, criterion: Criterion) -> Any:
        total, pieces = adversary.loss(inputs, targets, criterion)
        return total, pieces.output, pieces.clean_loss

    step_loss.passes_after_split = 1 + adversary.extra_passes  # type: ignore[attr-defined]
    return step_loss


def check_config(c: RunConfig) -> None:
    """Raise ``ValueError`` naming the field when an ``afan_*`` option is out of range (checked for every
    method, so a sweep's rows never carry a value ``afan`` would refuse)."""
    problems = []
    if c.afan_steps < 0:
        problems.append(f"afan_steps: must be >= 0 (0 is the plain loss), got {c.afan_steps}")
    if not (math.isfinite(c.afan_step_size) and c.afan_step_size > 0):
        problems.append(f"afan_step_size: must be a finite number > 0, got {c.afan_step_size}")
    if c.afan_eps is not None and not (math.isfinite(c.afan_eps) and c.afan_eps > 0):
        problems.append(f"afan_eps: must be null (no bound) or a number > 0, got {c.afan_eps}")
    if not c.afan_strengths or not all(0.0 < s <= 1.0 for s in c.afan_strengths):
        problems.append(f"afan_strengths: a non-empty list of numbers in (0, 1], got {list(c.afan_strengths)}")
    if c.afan_normalize not in AFAN_NORMALIZE:
        problems.append(f"afan_normalize: expected one of {AFAN_NORMALIZE}, got {c.afan_normalize!r}")
    if not 0.0 <= c.afan_adv_weight <= 1.0:
        problems.append(f"afan_adv_weight: must be in [0, 1], got {c.afan_adv_weight}")
    if c.afan_bn not in ("freeze", "update"):
        problems.append(f"afan_bn: expected 'freeze' or 'update', got {c.afan_bn!r}")
    if c.afan_direction not in ("adversarial", "random"):
        problems.append(f"afan_direction: expected 'adversarial' or 'random', got {c.afan_direction!r}")
    if c.method == "afan" and c.afan_layer == "auto" and c.model not in AFAN_LAYERS:
        problems.append(f"afan_layer: no default for model {c.model!r}; give a module name")
    if problems:
        raise ValueError("; ".join(problems))


register_method(
    Method(
        "afan",
        False,
        None,
        "A-FAN: loss on clean and adversarially perturbed features at afan_layer, no weight decay",
        step_loss=_afan_step_loss,
    )
)
register_method(
    Method(
        "input_adv",
        False,
        None,
        "input-space adversarial training (PGD on the input, clean + adversarial loss), no weight decay",
        step_loss=_input_adv_step_loss,
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
        fused=config.fused_base,
    )
    if method.wrap is None:
        return base
    return method.wrap(base, Setup(model, example_inputs, constrained, config, total_steps))
