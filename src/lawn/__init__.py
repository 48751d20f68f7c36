"""lawn: LAWN (Logit Attenuating Weight Normalization) and its family of weight-norm methods for PyTorch.

What ``lawn`` exports (one rule, checked by tests/test_public_api.py): the top level holds LAWN and WRS, the
constraint engine, discovery, the schedule and the one-file methods (EMAN, MimicNorm, SSI, A-FAN) by name; each
method family with its own subpackage (``pruning``, ``nested``, ``unification``) is exported as that module, and
its names are reached through it: ``lawn.pruning.magnitude_masks``, ``lawn.nested.slice_model``. The family
names once flattened to the top level (``lawn.magnitude_masks``, ...) still work, with a ``DeprecationWarning``.
"""

from __future__ import annotations

from lawn import nested, pruning, unification
from lawn.afan import AFAN
from lawn.constraint import NormConstraint, NormDiverged, norms, project_onto_tangent, retract
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
    "NormConstraint",
    "NormDiverged",
    "ResidualBranch",
    "WRS",
    "all_layer_weights",
    "center_filters_",
    "center_filters_after_step",
    "check_homogeneity",
    "convert_to_mimicnorm",
    "explain",
    "final_homogeneous_params",
    "mimicnorm_filters",
    "nested",
    "norms",
    "params_feeding_normalization",
    "project_onto_tangent",
    "pruning",
    "retract",
    "scale_shift_invariant_penalty",
    "unification",
]
__version__ = "0.1.0"

# The family names that were flattened to the top level before the rule: name → family module.
_MOVED = {
    **dict.fromkeys(
        ["NestedConv2d", "NestedDropout", "NestedLinear", "mc_predict", "nested_kl", "recalibrate_batchnorm",
         "set_width", "slice_model"],
        "nested",
    ),
    **dict.fromkeys(
        ["WeightMask", "apply_masks", "current_masks", "iterative_magnitude_pruning", "magnitude_masks",
         "masks_from_state_dict", "prunable_weights", "prune_and_finetune", "reinitialize", "remove_masks",
         "rewind", "sparsity_report", "weight_correlation"],
        "pruning",
    ),
}  # fmt: skip


def __getattr__(name: str) -> object:
    import warnings

    family = _MOVED.get(name)
    if family is None:
        raise AttributeError(f"module 'lawn' has no attribute {name!r}")
    warnings.warn(
        f"lawn.{name} is deprecated: use lawn.{family}.{name} (method families are reached through their module)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(globals()[family], name)
