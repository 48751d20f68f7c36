"""Which weights get blocks: every Linear and Conv1d/2d/3d weight by default, or the ones named."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lawn.unification.blocks import BlockSpec
from lawn.unification.unified_blocks import UnifiedBlocks

SCANNED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_hardened(module: nn.Module) -> bool:
    """Whether ``module.weight`` carries a unification parametrization."""
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    return plist is not None and any(isinstance(p, UnifiedBlocks) for p in plist)


def _refuse_parametrized(name: str, module: nn.Module) -> None:
    """A weight under another parametrization (a pruning mask, weight_norm, …) cannot take unified blocks: the
    blocks would be computed from, and overwrite, a tensor the other parametrization owns."""
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    if plist is None or is_hardened(module):
        return
    kinds = ", ".join(type(p).__name__ for p in plist)
    raise ValueError(
        f"params: {name}.weight carries a parametrization ({kinds}); unification needs a plain weight. For a "
        "pruning mask, bake it first with lawn.remove_masks(model) (the pruned entries stay zero and unification "
        "treats them as small weights), or leave this weight out with params=[...]; nothing was changed"
    )


def select_weights(
    model: nn.Module, spec: BlockSpec, params: Iterable[torch.nn.Parameter | str] | None = None
) -> tuple[list[tuple[str, nn.Module]], list[str]]:
    """``([(module name, module), ...], skipped)``: the modules whose ``weight`` is to be blocked.

    ``params=None`` scans the model for Linear and Conv1d/2d/3d layers and skips (returns in ``skipped``) those whose
    input dimension ``spec.size`` does not divide. Named weights (``Parameter`` objects or names such as
    ``"features.3.weight"``) must each be a module's ``weight`` that ``spec`` can tile; anything else is an error.
    A weight under another parametrization (a pruning mask, weight_norm) is refused, scanned or named, before
    anything changes. Raises ValueError when nothing is left to unify.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(spec, BlockSpec):
        raise TypeError(f"spec: expected a BlockSpec, got {type(spec).__name__}")
    chosen: list[tuple[str, nn.Module]] = []
    skipped: list[str] = []
    if params is None:
        for name, module in model.named_modules():
            if isinstance(module, SCANNED) and not is_hardened(module):
                _refuse_parametrized(name, module)
                if spec.fits(module.weight):
                    chosen.append((name, module))
                else:
                    skipped.append(f"{name}.weight")
    else:
        if isinstance(params, (str, torch.Tensor)):
            params = [params]
        by_id = {
            id(module.weight): name
            for name, module in model.named_modules()
            if isinstance(getattr(module, "weight", None), nn.Parameter)
        }
        modules = dict(model.named_modules())
        for item in params:
            if isinstance(item, str):
                name = item[: -len(".weight")] if item.endswith(".weight") else ("" if item == "weight" else None)
                if name is None or name not in modules:
                    raise ValueError(
                        f"params: {item!r} is not the 'weight' of a module of the model; name weights "
                        "as in model.named_parameters(), e.g. 'conv2.weight'"
                    )
            elif isinstance(item, torch.Tensor):
                if id(item) not in by_id:
                    raise ValueError(
                        f"params: a tensor of shape {tuple(item.shape)} is not the weight of any module "
                        "of the model (biases and norm scales cannot be blocked)"
                    )
                name = by_id[id(item)]
            else:
                raise TypeError(f"params: expected Parameters or names, got {type(item).__name__}")
            module = modules[name]
            if is_hardened(module):
                raise ValueError(f"params: {name}.weight is already hardened; it cannot be unified twice")
            _refuse_parametrized(name, module)
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise ValueError(f"params: module {name!r} has no weight tensor")
            if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                raise ValueError(
                    f"params: {name}.weight belongs to a transposed conv, whose dim 1 is its output; "
                    "only Linear and Conv weights ((out, in, *kernel)) can be blocked"
                )
            spec.check(weight, f"{name}.weight")
            if all(m is not module for _, m in chosen):
                chosen.append((name, module))
    if not chosen:
        detail = f" (skipped, block size {spec.size} does not divide their input dim: {skipped})" if skipped else ""
        raise ValueError(
            f"model: nothing to unify: no Linear or Conv weight the block size fits{detail}; "
            "choose a BlockSpec size that divides some layer's input dimension, or name weights in params"
        )
    return chosen, skipped
