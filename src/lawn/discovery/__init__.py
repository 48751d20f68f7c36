"""Which weights: the final homogeneous sub-network (LAWN's tail), the weights feeding a normalization (WRS's
set), a numerical homogeneity check, and ``explain`` (in :mod:`lawn.discovery.explain`) that says why for each."""

from lawn.discovery.all_layers import all_layer_weights
from lawn.discovery.feeding_normalization import params_feeding_normalization
from lawn.discovery.final_homogeneous import Discovery, ParameterVerdict, discover, final_homogeneous_params
from lawn.discovery.homogeneity_check import HomogeneityReport, check_homogeneity

__all__ = [
    "Discovery",
    "HomogeneityReport",
    "ParameterVerdict",
    "all_layer_weights",
    "check_homogeneity",
    "discover",
    "final_homogeneous_params",
    "params_feeding_normalization",
]
