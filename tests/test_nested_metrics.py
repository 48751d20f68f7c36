"""Calibration and OOD metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from lawn.nested import expected_calibration_error, nll, ood_auroc


def test_ece_on_a_hand_computed_case() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 1, 0, 0])
    # 15 bins of width 1/15; confidences 0.9 (bin 13), 0.8 (bin 11), 0.7 (bin 10), 0.55 (bin 8), 0.5 (bin 7)
    # correct: 1, 0, 1, 0, 1 → |1−.9| + |0−.8| + |1−.7| + |0−.55| + |1−.5| = .1 + .8 + .3 + .55 + .5 = 2.25 over 5
    assert expected_calibration_error(probs, labels) == pytest.approx(2.25 / 5)
    # one bin: |mean accuracy − mean confidence| = |3/5 − 3.45/5|
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(abs(3 - 3.45) / 5)
    # a confidence on an upper bin edge stays in that bin: 0.5 and 8/15 share (7/15, 8/15]
    edge = torch.tensor([[0.5, 0.5], [8 / 15, 7 / 15]], dtype=torch.float64)
    assert expected_calibration_error(edge, torch.tensor([0, 1])) == pytest.approx(abs(0.5 - (0.5 + 8 / 15) / 2))
    perfect = torch.eye(3)
    assert expected_calibration_error(perfect, torch.arange(3)) == 0.0


def test_nll_and_auroc_by_hand() -> None:
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    assert nll(probs, torch.tensor([0, 1])) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2)
    sure = torch.tensor([[0.99, 0.01], [0.95, 0.05], [0.6, 0.4]])
    unsure = torch.tensor([[0.5, 0.5], [0.7, 0.3]])
    # entropies: in {.056, .199, .673}, out {.693, .611}: pairs out > in: 3 + 2 = 5 of 6
    assert ood_auroc(sure, unsure) == pytest.approx(5 / 6)
    assert ood_auroc(sure, unsure, score="max_prob") == pytest.approx(5 / 6)
    assert ood_auroc(sure, sure) == pytest.approx(0.5)  # ties count one half
    assert ood_auroc(unsure[:1], sure) == pytest.approx(0.0)


def test_metric_errors() -> None:
    with pytest.raises(ValueError, match="probs must be"):
        expected_calibration_error(torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match="labels must be"):
        nll(torch.ones(3, 2) / 2, torch.zeros(2))
    with pytest.raises(ValueError, match="score"):
        ood_auroc(torch.ones(2, 2) / 2, torch.ones(2, 2) / 2, score="energy")
    with pytest.raises(ValueError, match="at least one"):
        ood_auroc(torch.ones(0, 2), torch.ones(2, 2) / 2)
