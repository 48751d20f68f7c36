"""Unification at its edges: layers hardened with different block sizes export and load, a bad ADMM checkpoint
changes nothing, pruning masks are refused before anything is hardened, compression_report restores each
module's mode, and discovery on a hardened model names the parametrization."""

from __future__ import annotations

import copy

import pytest
import torch

import lawn
from lawn.unification import ADMM, BlockSpec, compression_report, export, harden, hardened_layers, load
from unification_helpers import small_convnet


def test_layers_hardened_with_different_block_sizes_export_and_load(tmp_path):
    model = small_convnet()
    harden(model, BlockSpec(size=4), params=["3.weight"])
    harden(model, BlockSpec(size=2), params=["6.weight", "8.weight"])
    assert {p.size for _, _, p in hardened_layers(model)} == {4, 2}
    path = tmp_path / "mixed.pt"
    export(model, path)
    fresh = load(path, small_convnet(seed=1))
    assert {n: p.size for n, _, p in hardened_layers(fresh)} == {"3": 4, "6": 2, "8": 2}
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_a_version_1_export_still_loads(tmp_path):
    model = small_convnet()
    harden(model, BlockSpec(size=4))
    path = tmp_path / "v2.pt"
    export(model, path)
    blob = torch.load(path, weights_only=True)
    old = {**blob, "version": 1, "block_size": 4}
    old["layers"] = {n: {k: v for k, v in e.items() if k != "size"} for n, e in blob["layers"].items()}
    torch.save(old, tmp_path / "v1.pt")
    fresh = load(tmp_path / "v1.pt", small_convnet(seed=1))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


@pytest.mark.parametrize(
    "change, culprit",
    [
        (lambda s: s.pop("steps"), "missing \\['steps'\\]"),
        (lambda s: s.update(rho=-1.0), "rho"),
        (lambda s: s.update(steps=1.5), "steps"),
        (lambda s: s["z"].update({"3.weight": torch.zeros(2)}), "shape"),
    ],
)
def test_a_bad_admm_checkpoint_changes_nothing(change, culprit):
    model = small_convnet()
    admm = ADMM(model, BlockSpec(size=4), update_every=1)
    admm.update()
    good = copy.deepcopy(admm.state_dict())
    other = ADMM(small_convnet(seed=2), BlockSpec(size=4), update_every=1)
    bad = copy.deepcopy(good)
    for key in ("z", "u"):
        bad[key] = {k: torch.full_like(v, 7.0) for k, v in bad[key].items()}
    change(bad)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises((ValueError, TypeError), match=culprit):
        other.load_state_dict(bad)
    after = other.state_dict()
    assert after["rho"] == before["rho"] and after["steps"] == before["steps"]
    for key in ("z", "u"):
        assert all(torch.equal(after[key][n], before[key][n]) for n in before[key])


def test_pruning_masks_are_refused_before_anything_is_hardened():
    model = small_convnet()
    lawn.pruning.apply_masks(model, lawn.pruning.magnitude_masks(model, 0.5, params=["6.weight"]))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"6\.weight carries a parametrization \(WeightMask\).*remove_masks"):
        harden(model, BlockSpec(size=4))
    with pytest.raises(ValueError, match="WeightMask"):
        ADMM(model, BlockSpec(size=4))
    assert list(hardened_layers(model)) == []
    assert model.state_dict().keys() == before.keys()
    lawn.pruning.remove_masks(model)  # the way the message gives: bake the mask, then unify
    harden(model, BlockSpec(size=4))
    assert len(list(hardened_layers(model))) == 3


def test_compression_report_restores_each_modules_own_mode():
    model = small_convnet()
    harden(model, BlockSpec(size=4))
    model.train()
    model[1].eval()  # a BatchNorm the user froze
    compression_report(model, example_input=torch.randn(2, 1, 8, 8))
    assert model.training and not model[1].training


def test_explain_on_a_hardened_model_names_the_parametrization():
    model = small_convnet()
    harden(model, BlockSpec(size=4))
    text = lawn.explain(model, torch.randn(2, 1, 8, 8))
    assert "UnifiedBlocks" in text and "8.weight" in text
    assert "sigmoid" not in text
    assert "stored form of 8.weight (parametrized by UnifiedBlocks)" in text


def test_discovery_on_a_hardened_model_names_the_parametrization_in_its_error():
    model = small_convnet()
    harden(model, BlockSpec(size=4))
    with pytest.raises(ValueError, match=r"computed by parametrizations: .*8\.weight \(UnifiedBlocks\)") as refused:
        lawn.final_homogeneous_params(model, torch.randn(2, 1, 8, 8))
    assert "sigmoid" not in str(refused.value)
