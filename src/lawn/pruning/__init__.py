"""Magnitude pruning and the lottery-ticket arms: masks, rewinding, re-initialization, fine-tuning, and the
initial/trained weight correlation (Liu et al., ICML 2021, arXiv 2102.11068)."""

from lawn.pruning.apply import WeightMask, apply_masks, current_masks, masks_from_state_dict, remove_masks
from lawn.pruning.arms import prune_and_finetune, reinitialize, rewind
from lawn.pruning.correlation import weight_correlation
from lawn.pruning.imp import iterative_magnitude_pruning
from lawn.pruning.masks import magnitude_masks, prunable_weights, random_masks
from lawn.pruning.report import sparsity_report

__all__ = [
    "WeightMask",
    "apply_masks",
    "current_masks",
    "iterative_magnitude_pruning",
    "magnitude_masks",
    "masks_from_state_dict",
    "prunable_weights",
    "prune_and_finetune",
    "random_masks",
    "reinitialize",
    "remove_masks",
    "rewind",
    "sparsity_report",
    "weight_correlation",
]
