"""Parameter names as the *unpruned* model spells them, for models with or without masks.

A masked weight lives at ``<module>.parametrizations.<name>.original`` and its mask at
``<module>.parametrizations.<name>.<i>.mask``; everything in this package names it ``<module>.<name>``, so
masks, initial states and reports use the same keys before and after pruning.

Tied weights (one ``Parameter`` held by two modules, e.g. an embedding tied to the output head) have one name
per holder; every name reaches the same stored tensor. Weights the user parametrized before pruning
(``weight_norm``, ``spectral_norm``, …) are named ``<module>.<name>`` too and read as the forward pass sees them;
in state dicts their stored tensors keep the keys the unpruned model has (``…parametrizations.weight.original0``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

_MASK_KEY = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.\d+\.mask$")
_GROUP_KEY = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.(original\d*|\d+\..+)$")
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def is_weighted(module: nn.Module) -> bool:
    """A conv/linear layer, Hugging Face's ``Conv1D`` (a linear layer with an ``in × out`` weight) included."""
    if isinstance(module, WEIGHTED):
        return True
    hf = sys.modules.get("transformers.pytorch_utils")  # a model can only hold a Conv1D if transformers is loaded
    conv1d = getattr(hf, "Conv1D", None)
    return conv1d is not None and isinstance(module, conv1d)


def dense_state(state: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, torch.Tensor]:
    """A state dict (or a module's) under unpruned names, masks left out and masked weights *as used*.

    A tensor whose only parametrization is a mask becomes ``<module>.<name>`` = ``original ⊙ mask``; a tensor
    that carries other parametrizations too keeps its stored keys (``original0``, spectral_norm's ``_u`` …), as
    the unpruned model spells them, and only its mask is left out.
    """
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a state dict or an nn.Module, got {type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str | None, str], dict[str, str]] = {}
    for key, value in state.items():
        m = _GROUP_KEY.match(key)
        if m is None:
            out[key] = value
        else:
            groups.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = key
    for (module, tensor), entries in groups.items():
        if set(entries) == {"original", "0.mask"}:  # masked, nothing else
            original, mask = state[entries["original"]], state[entries["0.mask"]]
            out[_join(module or "", tensor)] = original * mask.to(original.dtype)
            continue
        for key in entries.values():
            if not _MASK_KEY.match(key):
                out[key] = state[key]
    return out


def split_name(name: str) -> tuple[str, str]:
    """``"features.3.weight"`` → ``("features.3", "weight")``."""
    module, _, tensor = name.rpartition(".")
    return module, tensor


def stored_identity(module: nn.Module, tensor: str) -> int:
    """Which stored tensor is behind ``module.<tensor>``: the ``Parameter`` itself, or its parametrization's
    (first) original; tied names share it."""
    if parametrize.is_parametrized(module, tensor):
        chain = module.parametrizations[tensor]
        return id(chain.original if hasattr(chain, "original") else chain.original0)
    return id(module._parameters[tensor])


def tensor_sites(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Every parameter by unpruned name, tied names included: ``{name: (module, tensor name)}``.

    A parametrized tensor appears once, as ``<module>.<name>``; the parametrizations' own modules are skipped.
    """
    skip: set[int] = set()
    out: dict[str, tuple[nn.Module, str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if id(module) in skip:
            continue
        names = [n for n, p in module._parameters.items() if p is not None]
        if parametrize.is_parametrized(module):
            skip.update(id(m) for m in module.parametrizations.modules())
            names += [n for n in module.parametrizations if n not in names]
        for n in names:
            out[_join(path, n)] = (module, n)
    return out


def canonical_names(model: nn.Module) -> dict[str, str]:
    """``{name: the first name of the same stored tensor}``: tied names map to one, every other to itself."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, (module, tensor) in tensor_sites(model).items():
        out[name] = first.setdefault(stored_identity(module, tensor), name)
    return out


@contextmanager
def reading(model: nn.Module) -> Iterator[None]:
    """Read weights without changing the model: every parametrization in eval mode meanwhile (spectral_norm
    runs a power iteration on its ``_u``/``_v`` buffers in train mode), each module's own mode restored after."""
    changed: list[nn.Module] = []
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for m in module.parametrizations.modules():
                if m.training:
                    m.training = False
                    changed.append(m)
    try:
        with torch.no_grad():
            yield
    finally:
        for m in changed:
            m.training = True


def weighted_layers(model: nn.Module) -> list[str]:
    """The ``weight`` names of every conv/linear layer, in registration order (a tied weight once)."""
    canonical = canonical_names(model)
    names = [_join(path, "weight") for path, m in model.named_modules() if is_weighted(m)]
    seen: set[str] = set()
    out = []
    for name in names:
        key = canonical.get(name, name)
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out


def effective_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter by unpruned name (tied names included), as the forward pass sees it (masked weights
    after masking), read without changing the model."""
    with reading(model):
        return {name: getattr(module, tensor).detach() for name, (module, tensor) in tensor_sites(model).items()}
