"""The fused C++ kernel (``fused=True``): agrees with the reference, takes only what it can, falls back cleanly."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lawn
import lawn.constraint.fused as constraint_fused
from lawn.constraint import norms, project_onto_tangent, retract
from lawn.constraint.fused import fused_project_onto_tangent_, fused_retract_
from lawn_helpers import BNNet, assert_falls_back_once, batches

SHAPES = [(), (7,), (3, 5), (4, 3, 3, 3), (1, 9), (6, 1), (33, 4100)]  # 4100 > one 4096-element block per row
# The kernel takes contiguous and channels-last fp32 tensors; transposed ones, other dtypes and a gradient laid out
# unlike its weight ("mixed": a channels-last weight with a contiguous gradient) go to the foreach path.
KINDS = ["contiguous", "channels_last", "mixed", "transposed", "bf16", "fp64"]


@pytest.fixture(scope="module", autouse=True)
def kernel():
    """Build the kernel once for this module (a failed build is a failure here, not a skip)."""
    assert constraint_fused.available(), "the fused kernel did not build (needs a C++ compiler and ninja)"


def _tensor(shape, kind, gen, grad=False):
    if kind == "transposed" and len(shape) == 2:
        return torch.randn(shape[::-1], generator=gen).t()
    x = torch.randn(shape, generator=gen)
    if len(shape) == 4 and (kind == "channels_last" or (kind == "mixed" and not grad)):
        return x.contiguous(memory_format=torch.channels_last)
    return {"bf16": x.bfloat16(), "fp64": x.double()}.get(kind, x)


@settings(max_examples=60, deadline=None)
@given(
    picks=st.lists(st.tuples(st.integers(0, len(SHAPES) - 1), st.sampled_from(KINDS)), min_size=1, max_size=5),
    granularity=st.sampled_from(["tensor", "row"]),
    seed=st.integers(0, 2**16),
)
def test_fused_agrees_with_reference(picks, granularity, seed):
    """Mixed lists: tensors the kernel takes and tensors it leaves to the foreach path."""
    picks = [(SHAPES[i], kind) for i, kind in picks if granularity == "tensor" or len(SHAPES[i]) >= 2]
    picks = picks or [((3, 4), "contiguous")]
    gen = torch.Generator().manual_seed(seed)
    ws = [_tensor(shape, kind, gen) for shape, kind in picks]
    gs = [_tensor(shape, kind, gen, grad=True) for shape, kind in picks]
    targets = [norms(w, granularity) * 1.3 for w in ws]
    tols = [{"rtol": 2e-2, "atol": 2e-2} if kind == "bf16" else {"rtol": 1e-5, "atol": 1e-6} for _, kind in picks]

    expected_g = [project_onto_tangent(g, w, granularity) for g, w in zip(gs, ws)]
    fused_project_onto_tangent_(gs, ws, granularity)
    for got, expected, tol in zip(gs, expected_g, tols):
        torch.testing.assert_close(got, expected, **tol)

    expected_w = [retract(w, t, granularity) for w, t in zip(ws, targets)]
    fused_retract_(ws, targets, granularity)
    for got, expected, tol in zip(ws, expected_w, tols):
        torch.testing.assert_close(got, expected, **tol)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_sums_are_accurate_for_large_tensors_and_do_not_depend_on_the_thread_count(granularity):
    """fp32 blocks summed in fp64, in block order: the norm after a retraction is the target
    to 1e-6 (checked in fp64) at 3M elements, and the result is bit-identical with 1 or 2 threads."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(768, 4096, generator=gen)
    g = torch.randn(768, 4096, generator=gen)
    target = norms(w, granularity) * 0.7
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            w_n, g_n = w.clone(), g.clone()
            fused_project_onto_tangent_([g_n], [w_n], granularity)
            fused_retract_([w_n], [target], granularity)
            results.append((w_n, g_n))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    w_out, g_out = (x.double() for x in results[0])
    dims = None if granularity == "tensor" else 1
    exact_norm = torch.linalg.vector_norm(w_out, dim=dims)
    torch.testing.assert_close(exact_norm, target.double(), rtol=1e-6, atol=0)
    cosine = (g_out * w.double()).sum(dim=dims) / (torch.linalg.vector_norm(g_out, dim=dims) * exact_norm)
    assert cosine.abs().max() < 1e-6, "the projected gradient is orthogonal to the weight"


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_channels_last_weights_go_through_the_kernel(granularity, monkeypatch):
    """Channels-last conv weights (and their gradients, laid out alike) are dense with dim 0 outermost: the kernel
    takes them as they are, and they match the reference."""
    fallbacks = []
    monkeypatch.setattr(constraint_fused, "foreach_project_onto_tangent_", lambda *args: fallbacks.append(args))
    monkeypatch.setattr(constraint_fused, "foreach_retract_", lambda *args: fallbacks.append(args))
    gen = torch.Generator().manual_seed(0)
    w, g = (torch.randn(16, 8, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last) for _ in range(2))
    target = norms(w, granularity) * 0.8
    expected_g = project_onto_tangent(g, w, granularity)
    fused_project_onto_tangent_([g], [w], granularity)
    expected_w = retract(w, target, granularity)
    fused_retract_([w], [target], granularity)
    assert fallbacks == []
    assert w.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(g, expected_g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, expected_w, rtol=1e-5, atol=1e-6)


def test_in_place_updates_bump_the_version_counters():
    """Autograd must see the kernel's writes (a stale graph then fails loudly instead of using new weights)."""
    w = torch.nn.Parameter(torch.randn(4, 5))
    g = torch.randn(4, 5)
    w_version, g_version = w._version, g._version
    fused_project_onto_tangent_([g], [w], "tensor")
    fused_retract_([w], [norms(w)], "tensor")
    assert g._version > g_version and w._version > w_version


def test_build_failure_warns_once_and_falls_back_to_the_foreach_path(monkeypatch):
    def broken_build():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(constraint_fused, "build", broken_build)
    monkeypatch.setattr(constraint_fused._Kernel, "module", None)
    monkeypatch.setattr(constraint_fused._Kernel, "failed", False)

    def run(**options):
        torch.manual_seed(0)
        model = BNNet()
        # RAdam: a base the fused step (lawn.constraint.fused_step) does not implement, so fused=True uses this kernel
        opt = lawn.LAWN(torch.optim.RAdam(model.parameters(), lr=1e-2), model.tail(), free_steps=2, **options)
        return model, opt

    assert_falls_back_once(run(fused=True), run(), match="building the fused kernel failed.*no compiler here")


def test_nothing_is_built_when_no_tensor_would_use_the_kernel(monkeypatch):
    """E.g. ``fused=True`` on a bf16 (or GPU) model: no half-minute build, no warning, the foreach path."""
    monkeypatch.setattr(constraint_fused, "build", lambda: pytest.fail("the kernel must not be built"))
    monkeypatch.setattr(constraint_fused._Kernel, "module", None)
    monkeypatch.setattr(constraint_fused._Kernel, "failed", False)
    gen = torch.Generator().manual_seed(0)
    w, g = (torch.randn(5, 4, generator=gen).bfloat16() for _ in range(2))
    expected_g = project_onto_tangent(g, w)
    expected_w = retract(w, norms(w) * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused_project_onto_tangent_([g], [w], "tensor")
        fused_retract_([w], [norms(w) * 2], "tensor")
    torch.testing.assert_close(g, expected_g, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w, expected_w, rtol=2e-2, atol=2e-2)


def test_a_compiled_step_traces_the_foreach_path_instead():
    """Inside ``torch.compile`` the opaque kernel would break the graph: the traceable foreach path runs."""
    torch.manual_seed(0)
    model = BNNet()
    opt = lawn.LAWN(torch.optim.SGD(model.parameters(), lr=0.05), model.tail(), free_steps=1, fused=True)
    step = torch.compile(opt.step, backend="eager", fullgraph=False)
    for xb, yb in batches(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        step()
    for (_, p), target in zip(model.tail(), opt.target_norms.values()):
        torch.testing.assert_close(norms(p), target)
