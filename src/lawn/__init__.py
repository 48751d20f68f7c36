"""lawn: LAWN (Logit Attenuating Weight Normalization) and its family of weight-norm methods for PyTorch."""

from lawn.constraint import norms, project_onto_tangent, retract
from lawn.discovery import final_homogeneous_params
from lawn.explain import explain
from lawn.homogeneity_check import HomogeneityReport, check_homogeneity
from lawn.lawn import LAWN
from lawn.norm_constraint import NormConstraint

__all__ = [
    "LAWN",
    "HomogeneityReport",
    "NormConstraint",
    "check_homogeneity",
    "explain",
    "final_homogeneous_params",
    "norms",
    "project_onto_tangent",
    "retract",
]
__version__ = "0.1.0"
