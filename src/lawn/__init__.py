"""lawn: LAWN (Logit Attenuating Weight Normalization) and its family of weight-norm methods for PyTorch."""

from lawn import unification
from lawn.afan import AFAN
from lawn.constraint import NormConstraint, norms, project_onto_tangent, retract
from lawn.constraint.auto_switch import AutoSwitch
from lawn.discovery import (
    HomogeneityReport,
    all_layer_weights,
    check_homogeneity,
    final_homogeneous_params,
    params_feeding_normalization,
)
from lawn.discovery.explain import explain
from lawn.eman import EMAN, EMATeacher
from lawn.lawn import LAWN
from lawn.mimicnorm import center_filters_, center_filters_after_step, convert_to_mimicnorm, mimicnorm_filters
from lawn.nested import (
    NestedConv2d,
    NestedDropout,
    NestedLinear,
    mc_predict,
    nested_kl,
    recalibrate_batchnorm,
    set_width,
    slice_model,
)
from lawn.pruning import (
    WeightMask,
    apply_masks,
    current_masks,
    iterative_magnitude_pruning,
    magnitude_masks,
    masks_from_state_dict,
    prunable_weights,
    prune_and_finetune,
    reinitialize,
    remove_masks,
    rewind,
    sparsity_report,
    weight_correlation,
)
from lawn.schedule import LAWNSchedule
from lawn.ssi import ResidualBranch, scale_shift_invariant_penalty
from lawn.wrs import WRS

__all__ = [
    "AFAN",
    "AutoSwitch",
    "EMAN",
    "EMATeacher",
    "HomogeneityReport",
    "LAWN",
    "LAWNSchedule",
    "NestedConv2d",
    "NestedDropout",
    "NestedLinear",
    "NormConstraint",
    "ResidualBranch",
    "WRS",
    "WeightMask",
    "all_layer_weights",
    "apply_masks",
    "center_filters_",
    "center_filters_after_step",
    "check_homogeneity",
    "convert_to_mimicnorm",
    "current_masks",
    "explain",
    "final_homogeneous_params",
    "iterative_magnitude_pruning",
    "magnitude_masks",
    "masks_from_state_dict",
    "mc_predict",
    "mimicnorm_filters",
    "nested_kl",
    "norms",
    "params_feeding_normalization",
    "project_onto_tangent",
    "prunable_weights",
    "prune_and_finetune",
    "recalibrate_batchnorm",
    "reinitialize",
    "remove_masks",
    "retract",
    "rewind",
    "scale_shift_invariant_penalty",
    "set_width",
    "slice_model",
    "sparsity_report",
    "unification",
    "weight_correlation",
]
__version__ = "0.1.0"
