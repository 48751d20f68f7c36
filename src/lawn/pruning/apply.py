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

from lawn.pruning._names import _MASK_KEY, canonical_names, effective_tensors, stored_identity, tensor_sites


class WeightMask(nn.Module):
    """The parametrization ``W ↦ W ⊙ mask`` (``mask`` a bool buffer, saved with the model).

    The mask in the weight's dtype is converted once and reused until the buffer changes (a new tensor, or an
    in-place change, which bumps its version): the product is the same, without a conversion every forward pass.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().to(torch.bool))
        self._as_dtype: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (buffer, its version, converted)

    def mask_as(self, dtype: torch.dtype) -> torch.Tensor:
        """``mask`` in ``dtype`` (ones and zeros), cached per buffer version; never cached while compiling or
        under ``inference_mode`` (an inference tensor cannot be saved for a later backward)."""
        mask = self.mask
        if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
            return mask.to(dtype)
        cached = self._as_dtype
        if cached is None or cached[0] is not mask or cached[1] != mask._version or cached[2].dtype != dtype:
            cached = (mask, mask._version, mask.to(dtype))
            self._as_dtype = cached
        return cached[2]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask_as(weight.dtype)


def _mask_module(module: nn.Module, tensor: str) -> WeightMask | None:
    if not parametrize.is_parametrized(module, tensor):
        return None
    for p in module.parametrizations[tensor]:
        if isinstance(p, WeightMask):
            return p
    return None


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks now on ``model`` (``{name: bool tensor}``, the live buffers; a tied weight under each name)."""
    out: dict[str, torch.Tensor] = {}
    for name, (module, tensor) in tensor_sites(model).items():
        mask = _mask_module(module, tensor)
        if mask is not None:
            out[name] = mask.mask
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
    """``masks`` checked against ``model`` (known names, equal shapes, bool values, one mask per tied weight);
    nothing is modified. A tied weight named twice with equal masks is kept once, under its first name."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks: expected a dict {{parameter name: bool tensor}}, got {type(masks).__name__}")
    if not masks:
        raise ValueError("masks: empty; nothing to prune")
    known = effective_tensors(model)
    canonical = canonical_names(model)
    checked: dict[str, torch.Tensor] = {}
    given_as: dict[str, str] = {}
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
        mask = mask.to(known[name].device)
        first = given_as.setdefault(canonical[name], name)
        if first != name:
            if not torch.equal(checked[first], mask):
                raise ValueError(
                    f"masks: {first!r} and {name!r} are one tied weight but their masks differ; give one mask "
                    "(it applies to every module that holds the weight)"
                )
            continue
        checked[name] = mask
    return checked


def _holders(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """``{name: every (module, tensor) that holds the same stored tensor}``, each module once (tied names share
    one list). Masking keeps the stored tensor, so this stays valid while masks are applied."""
    sites = tensor_sites(model)
    by_identity: dict[int, dict[tuple[int, str], tuple[nn.Module, str]]] = {}
    for module, tensor in sites.values():
        by_identity.setdefault(stored_identity(module, tensor), {}).setdefault((id(module), tensor), (module, tensor))
    return {name: list(by_identity[stored_identity(*site)].values()) for name, site in sites.items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Mask ``model``'s parameters in place (``W = W_stored ⊙ M``; compounds with a mask already there).

    A tied weight gets one mask, shared by every module that holds it, so it stays tied. All masks are checked
    before anything changes. Returns ``model``.
    """
    checked = check_masks(model, masks)
    holders = _holders(model)
    for name, mask in checked.items():
        sites = holders[name]
        existing = [_mask_module(module, tensor) for module, tensor in sites]
        shared = next((e for e in existing if e is not None), None)
        if shared is None:
            shared = WeightMask(mask)
        else:
            shared.mask.logical_and_(mask)
        for (module, tensor), own in zip(sites, existing):
            if own is None:
                parametrize.register_parametrization(module, tensor, shared, unsafe=True)
            elif own is not shared:
                own.mask.logical_and_(mask)
        for module, tensor in sites:
            chain = module.parametrizations[tensor]
            if len(chain) == 1:  # only our mask: zero the stored weight too, so nothing can grow there
                chain.original.mul_(shared.mask.to(chain.original.dtype))
    return model


@torch.no_grad()
def remove_masks(model: nn.Module, bake: bool = True) -> nn.Module:
    """Take every mask off ``model``; with ``bake`` the weights keep their masked values (zeros in place),
    without it the stored weights come back. A tensor masked *and* otherwise parametrized (weight_norm, …)
    loses only its mask with ``bake=False``; ``bake=True`` refuses it (its stored form cannot hold the zeros)."""
    sites = tensor_sites(model)
    masked = [(name, *sites[name]) for name in current_masks(model)]
    if bake:
        for name, module, tensor in masked:
            if len(module.parametrizations[tensor]) != 1:
                raise ValueError(
                    f"remove_masks: {name!r} has other parametrizations besides its mask, which cannot hold the "
                    "zeros; use remove_masks(model, bake=False) to take the mask off and keep them, or remove "
                    "those parametrizations first"
                )
    for _, module, tensor in masked:
        if not parametrize.is_parametrized(module, tensor):
            continue  # a tied or shared tensor, done under another name
        chain = module.parametrizations[tensor]
        if len(chain) == 1:
            parametrize.remove_parametrizations(module, tensor, leave_parametrized=bake)
        else:
            for i in reversed([i for i, p in enumerate(chain) if isinstance(p, WeightMask)]):
                del chain[i]
    return model
