"""Parameter names as the *unpruned* model spells them, for models with or without masks.

A masked weight lives at ``<module>.parametrizations.<name>.original`` and its mask at
``<module>.parametrizations.<name>.<i>.mask``; everything in this package names it ``<module>.<name>``, so
masks, initial states and reports use the same keys before and after pruning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

_ORIGINAL = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.original$")
_MASK_KEY = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.\d+\.mask$")
_PARAMETRIZATION_BUFFER = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.\d+\..+$")
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def dense_name(key: str) -> str | None:
    """``a.parametrizations.weight.original`` → ``a.weight``; a parametrization's own buffer → ``None``."""
    m = _ORIGINAL.match(key)
    if m:
        return f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)
    if _PARAMETRIZATION_BUFFER.match(key):
        return None
    return key


def dense_state(state: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, torch.Tensor]:
    """A state dict (or a module's) under unpruned names, masks left out and masked weights *as used*
    (``original ⊙ mask``, when the state holds that mask)."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a state dict or an nn.Module, got {type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = dense_name(key)
        if name is not None:
            out[name] = value
        else:
            m = _MASK_KEY.match(key)
            if m:
                masks[f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)] = value
    for name, mask in masks.items():
        if name in out:
            out[name] = out[name] * mask.to(out[name].dtype)
    return out


def split_name(name: str) -> tuple[str, str]:
    """``"features.3.weight"`` → ``("features.3", "weight")``."""
    module, _, tensor = name.rpartition(".")
    return module, tensor


def weighted_layers(model: nn.Module) -> list[str]:
    """The ``weight`` names of every conv/linear layer, in registration order."""
    return [f"{path}.weight" if path else "weight" for path, m in model.named_modules() if isinstance(m, WEIGHTED)]


def effective_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter by unpruned name, as the forward pass sees it (masked weights after masking)."""
    out: dict[str, torch.Tensor] = {}
    for key, _ in model.named_parameters():
        name = dense_name(key)
        if name is None:
            continue
        module_path, tensor = split_name(name)
        module = model.get_submodule(module_path)
        out[name] = getattr(module, tensor)
    return out
