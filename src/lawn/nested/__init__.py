"""Bayesian nested networks (Cui et al., CVPR 2021): a learned channel order, sub-networks at every width.

Layers (:class:`NestedLinear`, :class:`NestedConv2d`) carry a variational ordering unit over groups of their
output units; :class:`NestedDropout` is the fixed-rate nested dropout baseline. Controls: :func:`nested_kl`,
:func:`set_width`, :func:`recalibrate_batchnorm`, :func:`mc_predict`, :func:`slice_model`. Metrics live here only
(``lawn.nested.expected_calibration_error``, ``nll``, ``ood_auroc``).
"""

from lawn.nested.control import mc_predict, nested_kl, nested_modules, recalibrate_batchnorm, set_width
from lawn.nested.layers import NestedConv2d, NestedDropout, NestedLinear, NestedModule
from lawn.nested.metrics import expected_calibration_error, nll, ood_auroc, predictive_entropy
from lawn.nested.ordering import VariationalOrdering, downhill_kl, downhill_log_probs, downhill_mask
from lawn.nested.slicing import slice_model

__all__ = [
    "NestedConv2d",
    "NestedDropout",
    "NestedLinear",
    "NestedModule",
    "VariationalOrdering",
    "downhill_kl",
    "downhill_log_probs",
    "downhill_mask",
    "expected_calibration_error",
    "mc_predict",
    "nested_kl",
    "nested_modules",
    "nll",
    "ood_auroc",
    "predictive_entropy",
    "recalibrate_batchnorm",
    "set_width",
    "slice_model",
]
