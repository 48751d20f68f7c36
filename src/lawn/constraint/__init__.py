"""The norm-constraint engine: which weights, what target norm, at what granularity, with or without projection.

``reference`` states the math one tensor at a time; ``foreach``, ``fused`` and ``compiled`` are the fast paths that
must agree with it; ``engine.NormConstraint`` is the optimizer wrapper that LAWN and WRS configure.
"""

from lawn.constraint.engine import NormConstraint
from lawn.constraint.reference import (
    GRANULARITIES,
    Granularity,
    compute_dtype,
    norms,
    output_dim,
    project_onto_tangent,
    retract,
    set_output_dim,
)

__all__ = [
    "GRANULARITIES",
    "Granularity",
    "NormConstraint",
    "compute_dtype",
    "norms",
    "output_dim",
    "project_onto_tangent",
    "retract",
    "set_output_dim",
]
