"""WeightMask converts its bool mask once per buffer version: same products and gradients as converting every
forward pass, and a changed, replaced, moved or re-typed mask is never served stale."""

import copy

import torch

import lawn
from lawn.pruning.apply import WeightMask
from pruning_helpers import make_net


def _reference(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return weight * mask.to(weight.dtype)  # the conversion every forward pass, as before the cache


def test_cached_product_and_gradient_equal_the_per_pass_conversion_bit_for_bit():
    torch.manual_seed(0)
    mask = torch.rand(30, 20) > 0.4
    weight = torch.randn(30, 20, requires_grad=True)
    ref_weight = weight.detach().clone().requires_grad_(True)
    upstream = torch.randn(30, 20)
    wm = WeightMask(mask)
    for _ in range(3):  # the second and third passes use the cached factor
        out, ref = wm(weight), _reference(ref_weight, mask)
        assert torch.equal(out, ref)
        out.backward(upstream)
        ref.backward(upstream)
        assert torch.equal(weight.grad, ref_weight.grad)
    assert wm._as_dtype is not None and wm._as_dtype[2].dtype == torch.float32


def test_an_in_place_change_of_the_mask_is_seen_at_the_next_pass():
    model = make_net()
    first = lawn.pruning.magnitude_masks(model, 0.5)
    lawn.pruning.apply_masks(model, first)
    model(torch.randn(2, 1, 4, 4))  # fills the cache
    second = lawn.pruning.magnitude_masks(model, 0.8)  # compounds in place (logical_and_ on the buffer)
    lawn.pruning.apply_masks(model, second)
    live = lawn.pruning.current_masks(model)
    for name, module in (("conv2.weight", model.conv2), ("fc1.weight", model.fc1)):
        stored = module.parametrizations.weight.original
        assert torch.equal(module.weight, _reference(stored, live[name]))
        assert int((module.weight != 0).sum()) <= int(live[name].sum())


def test_a_new_buffer_or_a_loaded_state_dict_replaces_the_cached_factor():
    torch.manual_seed(1)
    weight = torch.randn(6, 4)
    wm = WeightMask(torch.ones(6, 4, dtype=torch.bool))
    assert torch.equal(wm(weight), weight)
    wm.mask = torch.zeros(6, 4, dtype=torch.bool)  # a new buffer tensor, at the same version as the old one
    assert torch.equal(wm(weight), torch.zeros(6, 4))
    other = torch.rand(6, 4) > 0.5
    wm.load_state_dict({"mask": other})  # an in-place copy into the buffer
    assert torch.equal(wm(weight), _reference(weight, other))


def test_a_new_dtype_and_a_copy_get_their_own_factor():
    mask = torch.tensor([[True, False], [False, True]])
    wm = WeightMask(mask)
    w64 = torch.tensor([[1.5, 2.0], [3.0, 4.5]], dtype=torch.float64)
    assert wm(w64.float()).dtype == torch.float32
    assert torch.equal(wm(w64), _reference(w64, mask)) and wm(w64).dtype == torch.float64
    clone = copy.deepcopy(wm)
    clone.mask.logical_not_()
    assert torch.equal(clone(w64), _reference(w64, ~mask))
    assert torch.equal(wm(w64), _reference(w64, mask))  # the original's cache is its own


def test_a_pass_under_inference_mode_does_not_poison_training():
    model = make_net()
    lawn.pruning.apply_masks(model, lawn.pruning.magnitude_masks(model, 0.5))
    x = torch.randn(2, 1, 4, 4)
    with torch.inference_mode():
        model(x)
    model(x).sum().backward()  # would raise if an inference tensor had been cached and saved for backward
    assert model.fc1.parametrizations.weight.original.grad is not None
