"""``lawn.explain``: a readable table of what discovery decided for every parameter, and why."""

from __future__ import annotations

from torch import nn

from lawn.discovery._forward import ExampleInputs, OutputSelector
from lawn.discovery.final_homogeneous import Discovery, ParameterVerdict, discover
from lawn.discovery.parametrized import parametrization_note, parametrized_weights, stored_of


def _verdict(v: ParameterVerdict) -> str:
    return "in" if v.constrained else ("tail" if v.in_tail else "out")


def _shape(v: ParameterVerdict) -> str:
    return "×".join(map(str, v.shape)) or "scalar"


def _why(v: ParameterVerdict, parametrized: dict[str, str]) -> str:
    reason = v.reason
    weight = stored_of(v.name, parametrized)
    if weight is not None and v.in_tail and not v.constrained and len(v.shape) < 2:
        reason = f"in the tail, but a stored form of {weight} (parametrized by {parametrized[weight]}), not a weight"
    return f"{reason} [tied: also {', '.join(v.aliases)}]" if v.aliases else reason


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
