"""Calibration and out-of-distribution metrics for predicted class probabilities."""

from __future__ import annotations

import torch

__all__ = ["expected_calibration_error", "nll", "ood_auroc", "predictive_entropy"]


def _check(probs: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if probs.dim() != 2:
        raise ValueError(f"probs must be (examples, classes) probabilities, got shape {tuple(probs.shape)}")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != probs.shape[0]):
        raise ValueError(f"labels must be ({probs.shape[0]},) class indices, got shape {tuple(labels.shape)}")


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """``ECE = Σ_b (|B_b| / n) · |acc(B_b) − conf(B_b)|`` over ``bins`` equal-width confidence bins ``(b/M, (b+1)/M]``.

    Confidence is the top probability, accuracy whether its class is the label (Guo et al. 2017).
    """
    _check(probs, labels)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(torch.float64)
    conf = conf.to(torch.float64)
    index = (torch.ceil(conf * bins) - 1).clamp(0, bins - 1).long()  # (b/M, (b+1)/M] → b
    n = probs.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        inside = index == b
        if inside.any():
            total += inside.sum() / n * (correct[inside].mean() - conf[inside].mean()).abs()
    return float(total)


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood ``−(1/n) Σ log p(y_i | x_i)`` (probabilities clipped at 1e-12)."""
    _check(probs, labels)
    return float(-probs.gather(1, labels.long()[:, None]).clamp_min(1e-12).log().mean())


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``H = −Σ_c p_c log p_c`` per example."""
    _check(probs)
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)


def ood_auroc(in_probs: torch.Tensor, out_probs: torch.Tensor, score: str = "entropy") -> float:
    """AUROC of telling out-of-distribution from in-distribution inputs by a score of the predicted probabilities.

    ``score="entropy"`` (predictive entropy, higher = OOD) or ``"max_prob"`` (``1 − max_c p_c``). The AUROC is the
    Mann–Whitney statistic ``P(s_out > s_in) + ½ P(s_out = s_in)``: 0.5 is chance, 1.0 perfect.
    """
    _check(in_probs)
    _check(out_probs)
    if score == "entropy":
        s_in, s_out = predictive_entropy(in_probs), predictive_entropy(out_probs)
    elif score == "max_prob":
        s_in, s_out = 1 - in_probs.max(1).values, 1 - out_probs.max(1).values
    else:
        raise ValueError(f"score must be 'entropy' or 'max_prob', got {score!r}")
    if s_in.numel() == 0 or s_out.numel() == 0:
        raise ValueError("ood_auroc needs at least one in-distribution and one out-of-distribution example")
    scores = torch.cat([s_in, s_out]).to(torch.float64)
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    uniq, inverse = torch.unique(scores, return_inverse=True)  # average ranks over ties
    sums = torch.zeros_like(uniq).index_add_(0, inverse, ranks)
    counts = torch.zeros_like(uniq).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n_in, n_out = s_in.numel(), s_out.numel()
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))
