"""``lawn.explain``: a readable table of what discovery decided for every parameter, and why."""

from __future__ import annotations

import re

from torch import nn
from torch.nn.utils import parametrize

from lawn.discovery._forward import ExampleInputs, OutputSelector
from lawn.discovery.final_homogeneous import Discovery, ParameterVerdict, discover


def _verdict(v: ParameterVerdict) -> str:
    return "in" if v.constrained else ("tail" if v.in_tail else "out")


def _shape(v: ParameterVerdict) -> str:
    return "×".join(map(str, v.shape)) or "scalar"


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


def _stored_of(name: str, parametrized: dict[str, str]) -> str | None:
    """The weight whose stored form ``name`` is (``3.parametrizations.weight.original0`` → ``3.weight``)."""
    m = _STORED.match(name)
    if m is None:
        return None
    weight = f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)
    return weight if weight in parametrized else None


def _why(v: ParameterVerdict, parametrized: dict[str, str]) -> str:
    reason = v.reason
    weight = _stored_of(v.name, parametrized)
    if weight is not None and v.in_tail and not v.constrained and len(v.shape) < 2:
        reason = f"in the tail, but a stored form of {weight} (parametrized by {parametrized[weight]}), not a weight"
    return f"{reason} [tied: also {', '.join(v.aliases)}]" if v.aliases else reason


def parametrization_note(found: Discovery, parametrized: dict[str, str]) -> str | None:
    """Why nothing qualified when the tail's weights are parametrized (hardened, …): the weights are computed
    from stored tensors that are not weights themselves, so the usual "return logits" advice does not apply."""
    blocked = sorted({w for v in found.parameters if v.in_tail and (w := _stored_of(v.name, parametrized)) is not None})
    if not blocked:
        return None
    listed = ", ".join(f"{w} ({parametrized[w]})" for w in blocked[:4]) + (", …" if len(blocked) > 4 else "")
    return (
        f"{found.model_name}: the weights of the final homogeneous sub-network are computed by parametrizations: "
        f"{listed}; their stored tensors are not weights LAWN can hold at a norm. Constrain the effective weights "
        "before they are parametrized (train with LAWN, then harden), or remove the parametrization first "
        "(torch.nn.utils.parametrize.remove_parametrizations(module, 'weight'))."
    )


def render(found: Discovery, parametrized: dict[str, str] | None = None) -> str:
    """The table for a finished :func:`lawn.discovery.discover` pass (``parametrized``: the model's
    :func:`parametrized_weights`, to name the parametrization behind a stored tensor)."""
    parametrized = {} if parametrized is None else parametrized
    n_in = sum(v.constrained for v in found.parameters)
    n_weights = sum(len(v.shape) >= 2 for v in found.parameters)
    mode = "train" if found.training else "eval"
    header = (
        f"{found.model_name} ({mode} mode, strict={found.strict}): {n_in} of {n_weights} weights "
        "in the final homogeneous sub-network"
    )
    rows = [("parameter", "shape", "LAWN", "why")]
    rows += [(v.name, _shape(v), _verdict(v), _why(v, parametrized)) for v in found.parameters]
    widths = [max(len(row[k]) for row in rows) for k in range(3)]
    lines = [header, ""]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    lines += [
        "",
        "in: constrained by LAWN; tail: in the sub-network but not constrained (bias, scale or frozen); "
        "out: reaches the output through a non-homogeneous operation (or not at all)",
    ]
    if n_in == 0:
        lines.append(parametrization_note(found, parametrized) or found.why_empty())
    return "\n".join(lines)


def explain(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    strict: bool = False,
    output: OutputSelector = None,
    judge_frozen: bool = False,
) -> str:
    """A table of every parameter of ``model``: in or out of the final homogeneous sub-network, and why.

    Same pass as :func:`lawn.final_homogeneous_params` (same arguments), but it never raises for a model
    without a homogeneous tail: it shows which operation blocks each parameter. ``print(lawn.explain(m, x))``.
    """
    found = discover(model, example_inputs, strict=strict, output=output, judge_frozen=judge_frozen)
    return render(found, parametrized_weights(model))
