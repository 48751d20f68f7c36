"""Training methods stacked on a base optimizer: ``plain``, ``wd`` (weight decay) and ``lawn``.

A method says whether it trains with weight decay and how it wraps the base optimizer. To add one (say a
weight-rescaling variant), register a :class:`Method`; configs and sweeps pick it up by name.

``lawn``: the base optimizer (no weight decay) over all parameters, wrapped by ``lawn.LAWN`` over the
final homogeneous sub-network's weights, with ``free_steps = round(free_fraction × total_steps)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

import lawn
from lawn.harness.optimizers import build_base_optimizer

if TYPE_CHECKING:
    from lawn.harness.config import RunConfig

NamedParams = list[tuple[str, torch.Tensor]]


def constrained_params(model: nn.Module, example_inputs: Any) -> NamedParams:
    """The weights LAWN constrains: ``lawn.final_homogeneous_params(model, example_inputs)``.

    This is the harness's only point of contact with discovery.
    """
    return list(lawn.final_homogeneous_params(model, example_inputs))


def _lawn(base: Optimizer, constrained: NamedParams, config: RunConfig, total_steps: int) -> Optimizer:
    return lawn.LAWN(
        base,
        constrained,
        free_steps=free_steps(config, total_steps),
        granularity=config.granularity,  # type: ignore[arg-type]
        project_gradient=config.project_gradient,
        target_scale=config.target_scale,
    )


Wrap = Callable[[Optimizer, NamedParams, "RunConfig", int], Optimizer]


@dataclass(frozen=True)
class Method:
    name: str
    uses_weight_decay: bool
    wrap: Wrap | None
    summary: str


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


register_method(Method("plain", False, None, "the base optimizer, no weight decay"))
register_method(Method("wd", True, None, "the base optimizer with its weight_decay"))
register_method(Method("lawn", False, _lawn, "LAWN on the final homogeneous weights, no weight decay"))


def free_steps(config: RunConfig, total_steps: int) -> int:
    """LAWN's free phase: ``round(free_fraction × total_steps)`` optimizer steps."""
    return int(round(config.free_fraction * total_steps))


def build_optimizer(
    config: RunConfig, model: nn.Module, constrained: NamedParams, lr: float, total_steps: int
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
    return base if method.wrap is None else method.wrap(base, constrained, config, total_steps)
