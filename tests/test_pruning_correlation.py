"""weight_correlation: 1 for a tensor with itself, chance for independent tensors, per layer and global."""

import pytest
import torch

import lawn
from pruning_helpers import make_net


def test_a_tensor_with_itself_correlates_perfectly():
    model = make_net()
    out = lawn.pruning.weight_correlation(model, model, top=0.2)
    assert set(out["layers"]) == {"conv2.weight", "fc1.weight"}
    for stats in [*out["layers"].values(), out["global"]]:
        for key in ("overlap", "pearson", "spearman", "cosine"):
            assert stats[key] == pytest.approx(1.0)
        assert stats["chance"] == pytest.approx(0.2, abs=0.01)


def test_independent_tensors_sit_at_chance():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(200, 200, generator=g), "v": torch.randn(100, 50, generator=g)}
    b = {"w": torch.randn(200, 200, generator=g), "v": torch.randn(100, 50, generator=g)}
    for top in (0.1, 0.5):
        out = lawn.pruning.weight_correlation(a, b, top=top)
        stats = out["global"]
        assert stats["overlap"] == pytest.approx(top, abs=0.02)
        for key in ("pearson", "spearman", "cosine"):
            assert abs(stats[key]) < 0.02


def test_values_measure_what_they_say():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(50, 40, generator=g)
    flipped = {"w": -2 * w}  # magnitudes scaled, signs flipped
    out = lawn.pruning.weight_correlation({"w": w}, flipped)["global"]
    assert out["overlap"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0)
    assert out["cosine"] == pytest.approx(-1.0)
    squared = lawn.pruning.weight_correlation({"w": w}, {"w": w**3})["global"]
    assert squared["spearman"] == pytest.approx(1.0) and squared["pearson"] < 0.99  # monotone, not linear
    ties = lawn.pruning.weight_correlation(
        {"w": torch.tensor([[0.0, 0.0, 1.0, 2.0]])}, {"w": torch.tensor([[0.0, 0.0, 1.0, 2.0]])}
    )
    assert ties["global"]["spearman"] == pytest.approx(1.0)


def test_masked_model_is_read_as_the_forward_pass_sees_it():
    model = make_net()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    masks = lawn.pruning.magnitude_masks(model, 0.5)
    lawn.pruning.apply_masks(model, masks)
    out = lawn.pruning.weight_correlation(initial, model, top=0.5)
    assert out["global"]["overlap"] == pytest.approx(1.0)  # the kept half is the top half


def test_bad_inputs_name_the_culprit():
    a = {"w": torch.randn(3, 3)}
    with pytest.raises(ValueError, match="top"):
        lawn.pruning.weight_correlation(a, a, top=0.0)
    with pytest.raises(ValueError, match="'w'"):
        lawn.pruning.weight_correlation(a, {"w": torch.randn(3, 4)})
    with pytest.raises(ValueError, match="trained: has no parameter 'w'"):
        lawn.pruning.weight_correlation(a, {"x": torch.randn(3, 3)}, params=["w"])


def test_a_tensor_that_global_pruning_emptied_has_no_statistics_and_leaves_global_alone():
    """One global threshold can remove every weight of a small layer (an IMP chain's later rounds): that layer
    reports numel 0 and NaN, and ``global`` is the statistics of the other layers' survivors alone."""
    import math

    g = torch.Generator().manual_seed(2)
    initial = {"w": torch.randn(40, 30, generator=g), "v": torch.randn(10, 5, generator=g)}
    trained = {k: t + 0.3 * torch.randn(t.shape, generator=g) for k, t in initial.items()}
    kept = torch.rand(40, 30, generator=g) < 0.5
    masks = {"w": kept, "v": torch.zeros(10, 5, dtype=torch.bool)}
    out = lawn.pruning.weight_correlation(initial, trained, top=0.2, masks=masks)
    assert out["layers"]["v"]["numel"] == 0
    assert all(math.isnan(out["layers"]["v"][k]) for k in ("overlap", "chance", "pearson", "spearman", "cosine"))
    alone = lawn.pruning.weight_correlation({"w": initial["w"]}, {"w": trained["w"]}, top=0.2, masks={"w": kept})
    assert out["global"] == alone["global"] and out["global"]["numel"] == int(kept.sum())
