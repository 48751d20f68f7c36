"""lawn: LAWN (Logit Attenuating Weight Normalization) and its family of weight-norm methods for PyTorch."""

from lawn.afan import AFAN
from lawn.constraint import NormConstraint, norms, project_onto_tangent, retract
from lawn.discovery import (
    HomogeneityReport,
    check_homogeneity,
    final_homogeneous_params,
    params_feeding_normalization,
)
from lawn.discovery.explain import explain
from lawn.eman import EMAN, EMATeacher
from lawn.lawn import LAWN
from lawn.mimicnorm import center_filters_, center_filters_after_step, convert_to_mimicnorm, mimicnorm_filters
from lawn.ssi import ResidualBranch, scale_shift_invariant_penalty
from lawn.wrs import WRS

__all__ = [
    "AFAN",
    "EMAN",
    "EMATeacher",
    "HomogeneityReport",
    "LAWN",
    "NormConstraint",
    "ResidualBranch",
    "WRS",
    "center_filters_",
    "center_filters_after_step",
    "check_homogeneity",
    "convert_to_mimicnorm",
    "explain",
    "final_homogeneous_params",
    "mimicnorm_filters",
    "norms",
    "params_feeding_normalization",
    "project_onto_tangent",
    "retract",
    "scale_shift_invariant_penalty",
]
__version__ = "0.1.0"
