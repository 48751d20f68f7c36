"""Parametrized weights (hardened, masked, ``weight_norm``): which they are, and why discovery finds no weight there.

A parametrized weight is computed from stored tensors (``…parametrizations.weight.original0``); discovery sees those
stored tensors, which are not weights LAWN can hold at a norm, so when they make the whole tail the usual advice
("return logits") does not apply: the note names the parametrization instead.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from torch import nn
from torch.nn.utils import parametrize

if TYPE_CHECKING:
    from lawn.discovery.final_homogeneous import Discovery

_STORED = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.original\d*$")


def parametrized_weights(model: nn.Module) -> dict[str, str]:
    """``{weight name: its parametrizations}`` for every parametrized tensor of ``model`` (e.g.
    ``{"3.weight": "UnifiedBlocks"}`` on a hardened model): such a weight is computed from stored tensors."""
    out: dict[str, str] = {}
    for path, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor, chain in module.parametrizations.items():
                name = f"{path}.{tensor}" if path else tensor
                out[name] = " → ".join(type(p).__name__ for p in chain)
    return out


def stored_of(name: str, parametrized: dict[str, str]) -> str | None:
    """The weight whose stored form ``name`` is (``3.parametrizations.weight.original0`` → ``3.weight``)."""
    m = _STORED.match(name)
    if m is None:
        return None
    weight = f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)
    return weight if weight in parametrized else None


def parametrization_note(found: Discovery, parametrized: dict[str, str]) -> str | None:
    """Why nothing qualified when the tail's weights are parametrized (hardened, …): the weights are computed
    from stored tensors that are not weights themselves, so the usual "return logits" advice does not apply."""
    blocked = sorted({w for v in found.parameters if v.in_tail and (w := stored_of(v.name, parametrized)) is not None})
    if not blocked:
        return None
    listed = ", ".join(f"{w} ({parametrized[w]})" for w in blocked[:4]) + (", …" if len(blocked) > 4 else "")
    return (
        f"{found.model_name}: the weights of the final homogeneous sub-network are computed by parametrizations: "
        f"{listed}; their stored tensors are not weights LAWN can hold at a norm. Constrain the effective weights "
        "before they are parametrized (train with LAWN, then harden), or remove the parametrization first "
        "(torch.nn.utils.parametrize.remove_parametrizations(module, 'weight'))."
    )
