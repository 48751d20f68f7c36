"""``lawn.explain``: a readable table of what discovery decided for every parameter, and why."""

from __future__ import annotations

from torch import nn

from lawn.discovery._forward import ExampleInputs, OutputSelector
from lawn.discovery.final_homogeneous import Discovery, ParameterVerdict, discover


def _verdict(v: ParameterVerdict) -> str:
    return "in" if v.constrained else ("tail" if v.in_tail else "out")


def _shape(v: ParameterVerdict) -> str:
    return "×".join(map(str, v.shape)) or "scalar"


def _why(v: ParameterVerdict) -> str:
    return f"{v.reason} [tied: also {', '.join(v.aliases)}]" if v.aliases else v.reason


def render(found: Discovery) -> str:
    """The table for a finished :func:`lawn.discovery.discover` pass."""
    n_in = sum(v.constrained for v in found.parameters)
    n_weights = sum(len(v.shape) >= 2 for v in found.parameters)
    mode = "train" if found.training else "eval"
    header = (
        f"{found.model_name} ({mode} mode, strict={found.strict}): {n_in} of {n_weights} weights "
        "in the final homogeneous sub-network"
    )
    rows = [("parameter", "shape", "LAWN", "why")]
    rows += [(v.name, _shape(v), _verdict(v), _why(v)) for v in found.parameters]
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
        lines.append(found.why_empty())
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
    return render(discover(model, example_inputs, strict=strict, output=output, judge_frozen=judge_frozen))
