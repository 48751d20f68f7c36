"""Masks on a model: ``apply_masks``, ``remove_masks``, ``current_masks``, ``masks_from_state_dict``.

A mask is a ``torch.nn.utils.parametrize`` parametrization ``W = W_stored ⊙ M`` (:class:`WeightMask`), so the
forward pass, ``state_dict``, optimizers and ``torch.compile`` all see an ordinary module. Masked weights stay
exactly zero under any optimizer: the forward value is ``W_stored ⊙ M`` whatever the stored tensor holds, and
the stored tensor is zeroed on the mask when the mask is applied, so its gradient (``∇W ⊙ M``) is zero there and
momentum / Adam state started after pruning stays zero too (state carried over from dense training may move the
stored value, never the weight the model uses).

Any ``{name: bool tensor}`` works (weights, biases, embeddings), with names as the unpruned model spells them.
Applying a mask to an already masked tensor compounds: the new mask is ``old ∧ new`` (survivors only get pruned).
Checkpoints: ``model.state_dict()`` holds the stored weights and the masks; to load one into a fresh model,
``apply_masks(fresh, masks_from_state_dict(state))`` first, then ``fresh.load_state_dict(state)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from lawn.pruning._names import _MASK_KEY, dense_name, split_name


class WeightMask(nn.Module):
    """The parametrization ``W ↦ W ⊙ mask`` (``mask`` a bool buffer, saved with the model)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def _mask_module(module: nn.Module, tensor: str) -> WeightMask | None:
    if not parametrize.is_parametrized(module, tensor):
        return None
    for p in module.parametrizations[tensor]:
        if isinstance(p, WeightMask):
            return p
    return None


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks now on ``model`` (``{name: bool tensor}``, the live buffers)."""
    out: dict[str, torch.Tensor] = {}
    for path, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor in module.parametrizations:
            mask = _mask_module(module, tensor)
            if mask is not None:
                out[f"{path}.{tensor}" if path else tensor] = mask.mask
    return out


def masks_from_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The masks stored in a state dict of a masked model, by unpruned name (for loading into a fresh model)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _MASK_KEY.match(key)
        if m:
            out[f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)] = value.to(torch.bool)
    return out


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``masks`` checked against ``model`` (known names, equal shapes, bool values); nothing is modified."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks: expected a dict {{parameter name: bool tensor}}, got {type(masks).__name__}")
    if not masks:
        raise ValueError("masks: empty; nothing to prune")
    known = {dense_name(k): p for k, p in model.named_parameters()}
    known.pop(None, None)
    checked: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if name not in known:
            close = [k for k in known if k.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]][:6]
            raise ValueError(f"masks: unknown parameter {name!r}; the model has e.g. {close or list(known)[:6]}")
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"masks[{name!r}]: expected a bool tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"masks[{name!r}]: expected dtype torch.bool, got {mask.dtype} (use mask.bool())")
        if tuple(mask.shape) != tuple(known[name].shape):
            raise ValueError(
                f"masks[{name!r}]: shape {tuple(mask.shape)} does not match the parameter's {tuple(known[name].shape)}"
            )
        checked[name] = mask.to(known[name].device)
    return checked


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Mask ``model``'s parameters in place (``W = W_stored ⊙ M``; compounds with a mask already there).

    All masks are checked before anything changes. Returns ``model``.
    """
    checked = check_masks(model, masks)
    for name, mask in checked.items():
        module_path, tensor = split_name(name)
        module = model.get_submodule(module_path)
        existing = _mask_module(module, tensor)
        if existing is not None:
            existing.mask.logical_and_(mask)
            mask = existing.mask
        else:
            parametrize.register_parametrization(module, tensor, WeightMask(mask), unsafe=True)
        chain = module.parametrizations[tensor]
        if len(chain) == 1:  # only our mask: zero the stored weight too, so nothing can grow there
            chain.original.mul_(mask.to(chain.original.dtype))
    return model


@torch.no_grad()
def remove_masks(model: nn.Module, bake: bool = True) -> nn.Module:
    """Take every mask off ``model``; with ``bake`` the weights keep their masked values (zeros in place),
    without it the stored weights come back. A tensor masked *and* otherwise parametrized is refused."""
    for name in current_masks(model):
        module_path, tensor = split_name(name)
        module = model.get_submodule(module_path)
        if len(module.parametrizations[tensor]) != 1:
            raise ValueError(f"remove_masks: {name!r} has other parametrizations besides its mask; remove those first")
    for name in list(current_masks(model)):
        module_path, tensor = split_name(name)
        parametrize.remove_parametrizations(model.get_submodule(module_path), tensor, leave_parametrized=bake)
    return model
