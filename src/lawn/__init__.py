"""lawn: LAWN (Logit Attenuating Weight Normalization) and its family of weight-norm methods for PyTorch."""

from lawn.constraint import norms, project_onto_tangent, retract
from lawn.lawn import LAWN
from lawn.norm_constraint import NormConstraint

__all__ = ["LAWN", "NormConstraint", "norms", "project_onto_tangent", "retract"]
__version__ = "0.1.0"
