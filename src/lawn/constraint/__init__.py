"""The norm-constraint engine: which weights, what target norm, at what granularity, with or without projection.

Read it top to bottom: ``reference`` states the math one tensor at a time; ``weights`` says which tensors and
their rows; ``options`` and ``switch`` are the settings and when to switch; ``targets`` records the targets at the
switch; ``paths`` picks the code that runs a step (``foreach``, ``compiled``, ``fused``, ``fused_step``, the
reference), which must agree with the reference; ``engine.NormConstraint`` is the optimizer wrapper that LAWN and
WRS configure; ``checkpoint`` says how it loads a checkpoint; ``keys`` where it keeps its state.
"""

from lawn.constraint.engine import NormConstraint
from lawn.constraint.reference import (
    GRANULARITIES,
    Granularity,
    compute_dtype,
    norms,
    project_onto_tangent,
    retract,
)
from lawn.constraint.targets import NormDiverged
from lawn.constraint.weights import NamedWeight, output_dim, set_output_dim

__all__ = [
    "GRANULARITIES",
    "Granularity",
    "NamedWeight",
    "NormConstraint",
    "NormDiverged",
    "compute_dtype",
    "norms",
    "output_dim",
    "project_onto_tangent",
    "retract",
    "set_output_dim",
]
