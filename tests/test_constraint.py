"""The constraint math: the reference states it, the foreach path must agree with it."""

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lawn.constraint.foreach
from lawn.constraint import norms, project_onto_tangent, retract
from lawn.constraint.foreach import foreach_norms, foreach_project_onto_tangent_, foreach_retract_

SHAPES = [(7,), (3, 5), (4, 3, 3, 3), (1, 9), (6, 1)]


@contextlib.contextmanager
def _block_size(elements):
    """Sum the per-row / low-precision dot products over blocks of ``elements`` (a small value: many blocks)."""
    saved = lawn.constraint.foreach._BLOCK
    lawn.constraint.foreach._BLOCK = elements
    try:
        yield
    finally:
        lawn.constraint.foreach._BLOCK = saved


def _rows(x, granularity):
    return x.float().reshape(1, -1) if granularity == "tensor" else x.float().reshape(x.shape[0], -1)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_norms_match_definition(granularity):
    w = torch.randn(4, 3, 2)
    expected = _rows(w, granularity).pow(2).sum(1).sqrt()
    got = norms(w, granularity)
    assert got.dtype == torch.float32
    assert got.shape == (() if granularity == "tensor" else (4,))
    torch.testing.assert_close(got.reshape(-1), expected)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_projection_is_orthogonal_to_weight_and_idempotent(granularity):
    torch.manual_seed(0)
    w, g = torch.randn(5, 4, 3), torch.randn(5, 4, 3)
    p = project_onto_tangent(g, w, granularity)
    dots = (_rows(p, granularity) * _rows(w, granularity)).sum(1)
    assert dots.abs().max() < 1e-5
    torch.testing.assert_close(project_onto_tangent(p, w, granularity), p)
    # the removed part is parallel to w: g - p = c w
    removed = _rows(g - p, granularity)
    c = (removed * _rows(w, granularity)).sum(1, keepdim=True) / _rows(w, granularity).pow(2).sum(1, keepdim=True)
    torch.testing.assert_close(removed, c * _rows(w, granularity))


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_retract_reaches_target_and_keeps_direction(granularity):
    torch.manual_seed(1)
    w = torch.randn(6, 5)
    target = torch.rand(()) + 0.5 if granularity == "tensor" else torch.rand(6) + 0.5
    r = retract(w, target, granularity)
    torch.testing.assert_close(norms(r, granularity), target)
    cos = torch.nn.functional.cosine_similarity(_rows(r, granularity), _rows(w, granularity), dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos))


@settings(max_examples=60, deadline=None)
@given(
    shape_ids=st.lists(st.integers(0, len(SHAPES) - 1), min_size=1, max_size=5),
    granularity=st.sampled_from(["tensor", "row"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    tensor_by_tensor=st.booleans(),
    block=st.sampled_from([1 << 18, 4]),
    seed=st.integers(0, 2**16),
)
def test_foreach_agrees_with_reference(shape_ids, granularity, dtype, tensor_by_tensor, block, seed):
    """Both loop orders (tensor by tensor: CPU; batched: other devices), dots summed in one or many blocks."""
    shapes = [SHAPES[i] for i in shape_ids if granularity == "tensor" or len(SHAPES[i]) >= 2] or [(3, 4)]
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    gs = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    targets = [norms(w, granularity) * 1.3 for w in ws]
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}

    for got, w in zip(foreach_norms(ws, granularity), ws):
        torch.testing.assert_close(got, norms(w, granularity), **tol)

    expected_g = [project_onto_tangent(g, w, granularity) for g, w in zip(gs, ws)]
    with _block_size(block):
        foreach_project_onto_tangent_(gs, ws, granularity, tensor_by_tensor=tensor_by_tensor)
    for got, expected in zip(gs, expected_g):
        torch.testing.assert_close(got, expected, **tol)

    expected_w = [retract(w, t, granularity) for w, t in zip(ws, targets)]
    foreach_retract_(ws, targets, granularity, tensor_by_tensor=tensor_by_tensor)
    for got, expected in zip(ws, expected_w):
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, **tol)


def _peak_bytes_allocated(fn):
    """Peak of the CPU bytes allocated while ``fn`` runs, from PyTorch's allocator records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("tensor_by_tensor", [True, False])
def test_fast_path_allocates_no_temporary_the_size_of_a_weight(granularity, tensor_by_tensor):
    """Only scalars / row vectors and bounded dot-product blocks: far less than one weight (8 MB here)."""
    torch.manual_seed(0)
    ws = [torch.randn(1024, 2048), torch.randn(64, 32, 3, 3)]
    gs = [torch.randn_like(w) for w in ws]
    targets = [norms(w, granularity) for w in ws]
    weight_bytes = ws[0].numel() * ws[0].element_size()

    def constrain():
        foreach_project_onto_tangent_(gs, ws, granularity, tensor_by_tensor=tensor_by_tensor)
        foreach_retract_(ws, targets, granularity, tensor_by_tensor=tensor_by_tensor)

    constrain()  # warm-up
    peak = _peak_bytes_allocated(constrain)
    assert peak > 0, "the profiler must see the coefficients being allocated"
    assert peak <= lawn.constraint.foreach._BLOCK * 4 + 64 * 1024 < weight_bytes / 4, peak
