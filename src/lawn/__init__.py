"""lawn: LAWN (Logit Attenuating Weight Normalization) and its family of weight-norm methods for PyTorch."""

from lawn.constraint import norms, project_onto_tangent, retract
from lawn.lawn import LAWN
from lawn.norm_constraint import NormConstraint
from lawn.normalized_params import params_feeding_normalization
from lawn.wrs import WRS

__all__ = [
    "LAWN",
    "NormConstraint",
    "WRS",
    "norms",
    "params_feeding_normalization",
    "project_onto_tangent",
    "retract",
]
__version__ = "0.1.0"
