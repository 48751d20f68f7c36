"""Corrupted test images for the extra evaluations: Gaussian blur (``eval_blur_sigma``).

``gaussian_blur(x, σ)`` convolves each channel of ``N × C × H × W`` images with the separable kernel
``k_i ∝ exp(−i² / 2σ²)``, ``i = −r … r``, ``r = ⌈3σ⌉`` (normalized to sum 1), padding by replicating the border
(so a constant image stays constant and the background of a standardized image keeps its value).
``blurred_accuracy`` is the test accuracy (eval mode) on ``gaussian_blur(x_test, eval_blur_sigma)``: deterministic,
the same blurred test set for every run of a data set.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from lawn.harness.tasks import EVAL_BATCH


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The 1-D kernel ``k_i ∝ exp(−i² / 2σ²)``, ``|i| ≤ ⌈3σ⌉``, summing to 1 (float64)."""
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: the blur's std in pixels must be a finite number > 0, got {sigma!r}")
    radius = max(1, math.ceil(3 * sigma))
    i = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(i**2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` (``N × C × H × W``) blurred per channel by a Gaussian of std ``sigma`` pixels, border replicated."""
    if x.dim() != 4:
        raise ValueError(f"gaussian_blur: expected N × C × H × W images, got shape {tuple(x.shape)}")
    k = gaussian_kernel(sigma).to(x.device, x.dtype)
    r, c = len(k) // 2, x.shape[1]
    out = F.pad(x, (r, r, r, r), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@torch.no_grad()
def blurred_accuracy(task: Any, model: torch.nn.Module, sigma: float) -> float:
    """Test accuracy (eval mode) on the test images blurred by ``gaussian_blur(·, sigma)``."""
    x, y = task.splits["test"]
    if x.dim() != 4:
        raise ValueError(f"eval_blur_sigma: blur needs image inputs (N × C × H × W), the test set is {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    correct = 0.0
    for start in range(0, len(y), EVAL_BATCH):
        logits = model(gaussian_blur(x[start : start + EVAL_BATCH], sigma))
        correct += float(task.correct(logits, y[start : start + EVAL_BATCH]))
    model.train(was_training)
    return correct / len(y)
