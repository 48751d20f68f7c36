"""Calibration and out-of-distribution metrics for predicted class probabilities.

Every metric takes probabilities (rows in [0, 1] summing to 1 within 1e-3, checked: a row that is not, or that
holds a NaN or an infinity, is an error naming the row) or, with ``logits=True``, raw scores turned into
probabilities by ``softmax`` (in fp64).
"""

from __future__ import annotations

import torch

__all__ = ["expected_calibration_error", "nll", "ood_auroc", "predictive_entropy"]


_SUM_TOLERANCE = 1e-3


def _check(
    probs: torch.Tensor, labels: torch.Tensor | None = None, logits: bool = False, what: str = "probs"
) -> torch.Tensor:
    """``probs`` checked to be (examples, classes) probabilities, or ``softmax(probs)`` with ``logits=True``."""
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"{what} must be (examples, classes) probabilities, got shape {shape}")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != probs.shape[0]):
        raise ValueError(f"labels must be ({probs.shape[0]},) class indices, got shape {tuple(labels.shape)}")
    if not isinstance(logits, bool):
        raise TypeError(f"logits must be True or False, got {logits!r}")
    bad = ~torch.isfinite(probs).all(dim=1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(f"{what}: row {row} holds a NaN or an infinity ({probs[row].tolist()[:6]}…)")
    if logits:
        return torch.softmax(probs.to(torch.float64), dim=1)
    outside = ((probs < 0) | (probs > 1)).any(dim=1)
    off = (probs.to(torch.float64).sum(dim=1) - 1).abs() > _SUM_TOLERANCE
    for wrong, why in ((outside, "values outside [0, 1]"), (off, "a sum other than 1")):
        if wrong.any():
            row = int(wrong.nonzero()[0])
            raise ValueError(
                f"{what}: row {row} has {why} ({probs[row].tolist()[:6]}, sum {float(probs[row].sum()):.4g}); "
                "these are not probabilities: pass logits=True for raw model outputs, or softmax them first"
            )
    return probs


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = 15, *, logits: bool = False
) -> float:
    """``ECE = Σ_b (|B_b| / n) · |acc(B_b) − conf(B_b)|`` over ``bins`` equal-width confidence bins ``(b/M, (b+1)/M]``.

    Confidence is the top probability, accuracy whether its class is the label (Guo et al. 2017).
    ``logits=True``: ``probs`` are raw scores, ``softmax``-ed first.
    """
    probs = _check(probs, labels, logits)
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


def nll(probs: torch.Tensor, labels: torch.Tensor, *, logits: bool = False) -> float:
    """Mean negative log-likelihood ``−(1/n) Σ log p(y_i | x_i)`` (probabilities clipped at 1e-12;
    ``logits=True``: ``p = softmax(probs)``)."""
    probs = _check(probs, labels, logits)
    return float(-probs.gather(1, labels.long()[:, None]).clamp_min(1e-12).log().mean())


def predictive_entropy(probs: torch.Tensor, *, logits: bool = False) -> torch.Tensor:
    """``H = −Σ_c p_c log p_c`` per example (``logits=True``: ``p = softmax(probs)``)."""
    probs = _check(probs, logits=logits)
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)


def ood_auroc(
    in_probs: torch.Tensor, out_probs: torch.Tensor, score: str = "entropy", *, logits: bool = False
) -> float:
    """AUROC of telling out-of-distribution from in-distribution inputs by a score of the predicted probabilities.

    ``score="entropy"`` (predictive entropy, higher = OOD) or ``"max_prob"`` (``1 − max_c p_c``). The AUROC is the
    Mann–Whitney statistic ``P(s_out > s_in) + ½ P(s_out = s_in)``: 0.5 is chance, 1.0 perfect.
    ``logits=True``: both inputs are raw scores, ``softmax``-ed first.
    """
    in_probs = _check(in_probs, logits=logits, what="in_probs")
    out_probs = _check(out_probs, logits=logits, what="out_probs")
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
