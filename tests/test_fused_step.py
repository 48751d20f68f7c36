"""The fused constrained step (``lawn.constraint.fused_step``): the same result as projection → base step →
retraction on the reference path, for every supported base and option; the base's state in torch's own format;
everything else on today's paths; a failed build warns once."""

from __future__ import annotations

import warnings

import pytest
import torch

import lawn
import lawn.constraint.fused_step as fused_step
from fused_bases import BASES
from lawn.constraint import norms
from lawn_helpers import assert_falls_back_once, roundtrip

# Weights: a linear layer, a channels-last conv, rows longer than one 4096-element block, a tensor of several
# blocks (per tensor its sums run in parallel over blocks); plus an unconstrained bias (the base's own step).
SHAPES = [(6, 5), (4, 3, 3, 3), (2, 4100), (3, 9000)]
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 2e-2, "atol": 6e-2}}


@pytest.fixture(scope="module", autouse=True)
def kernel():
    """Build the kernel once for this module (a failed build is a failure here, not a skip)."""
    assert fused_step.available(), "the fused step kernel did not build (needs a C++ compiler and ninja)"


def make_params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in [*SHAPES, (7,)]:
        x = torch.randn(shape, generator=gen)
        if len(shape) == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        params.append(torch.nn.Parameter(x.to(dtype)))
    return params


def run(base: str, dtype: torch.dtype, steps: int, seed: int = 0, **options) -> tuple[list, lawn.LAWN]:
    """LAWN over ``make_params`` (all but the bias constrained), ``steps`` steps of fixed random gradients."""
    params = make_params(dtype, seed)
    opt = lawn.LAWN(BASES[base](params), params[:-1], free_steps=2, **options)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        for p in params:
            p.grad = (
                (torch.randn(p.shape, generator=gen) * 0.1)
                .to(dtype)
                .contiguous(memory_format=torch.channels_last if p.dim() == 4 else torch.contiguous_format)
            )
        opt.step()
    return params, opt


def assert_same_state(opt_a: torch.optim.Optimizer, opt_b: torch.optim.Optimizer, tolerance: dict) -> None:
    """Same keys, dtypes, shapes and layouts of every state tensor, and values within ``tolerance``."""
    for group_a, group_b in zip(opt_a.param_groups, opt_b.param_groups):
        for p_a, p_b in zip(group_a["params"], group_b["params"]):
            state_a, state_b = opt_a.state[p_a], opt_b.state[p_b]
            assert sorted(state_a) == sorted(state_b)
            for key, value in state_b.items():
                got = state_a[key]
                assert got.dtype == value.dtype and got.shape == value.shape and got.stride() == value.stride(), key
                torch.testing.assert_close(got.float(), value.float(), **tolerance)


@pytest.fixture
def kernel_calls(monkeypatch) -> list[int]:
    """How many tensors went through the fused kernel, per call."""
    calls: list[int] = []
    original = fused_step.step

    def counted(kernel, kind, params, *args, **kwargs):
        calls.append(len(params))
        return original(kernel, kind, params, *args, **kwargs)

    monkeypatch.setattr(fused_step, "step", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("base", list(BASES))
def test_fused_step_equals_the_reference_path(base, granularity, dtype, kernel_calls):
    """The default (``fused=None``) takes every constrained weight through the kernel and ends where the reference
    path (per-tensor projection, the base's own step, per-tensor retraction) ends, weights and state, after two
    free steps (state made by the base) and a few constrained ones (state carried on by the kernel)."""
    steps = 8 if dtype == torch.float32 else 5
    fused_params, fused = run(base, dtype, steps, granularity=granularity)
    ref_params, ref = run(base, dtype, steps, granularity=granularity, foreach=False, fused=False)
    assert kernel_calls and all(n == len(SHAPES) for n in kernel_calls)
    assert len(kernel_calls) == steps - 2
    for a, b in zip(fused_params, ref_params):
        torch.testing.assert_close(a.float(), b.float(), **TOLERANCE[dtype])
        assert a.dtype == b.dtype and a.stride() == b.stride()
    assert_same_state(fused, ref, TOLERANCE[dtype])
    for name, target in fused.target_norms.items():  # on their spheres (norms of the stored, rounded weights)
        p = dict(fused.constrained_parameters)[name]
        torch.testing.assert_close(norms(p, granularity), target, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=0)


@pytest.mark.parametrize("options", [{"project_gradient": False}, {"retract_every": 3}], ids=["no_projection", "wrs"])
def test_fused_step_without_projection_or_retraction(options, kernel_calls):
    """Without the projection, and on the steps without a retraction (WRS's interval): still the reference."""
    params = [make_params(torch.float32) for _ in range(2)]
    opts = [
        lawn.NormConstraint(torch.optim.SGD(ps, lr=0.05, momentum=0.9), ps[:-1], free_steps=1, **options, **extra)
        for ps, extra in zip(params, ({}, {"foreach": False, "fused": False}))
    ]
    gen = torch.Generator().manual_seed(3)
    for _ in range(7):
        grads = [torch.randn(p.shape, generator=gen) for p in params[0]]
        for ps, opt in zip(params, opts):
            for p, g in zip(ps, grads):
                p.grad = g.clone().contiguous(memory_format=torch.channels_last) if g.dim() == 4 else g.clone()
            opt.step()
    assert len(kernel_calls) == 6
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("base", ["adam_l2_amsgrad_maximize", "sgd_momentum"])
def test_checkpoints_interchange_with_the_unfused_path_and_a_plain_optimizer(base):
    """A fused run's checkpoint continues identically on the unfused path; a plain optimizer loads it (torch's own
    state format) and holds the same moments; a plain optimizer's checkpoint resumes under the fused step."""
    params, fused = run(base, torch.float32, 5)
    checkpoint = fused.state_dict()

    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    unfused = lawn.LAWN(BASES[base](copies), copies[:-1], free_steps=2, fused=False)
    unfused.load_state_dict(roundtrip(checkpoint))  # saved and loaded: no tensor shared with `fused`
    plain = BASES[base]([torch.nn.Parameter(p.detach().clone()) for p in params])
    plain.load_state_dict(roundtrip(checkpoint))
    assert_same_state(plain, fused, {"rtol": 0, "atol": 0})

    gen = torch.Generator().manual_seed(7)
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=gen) * 0.1 for p in params]
        for ps, opt in ((params, fused), (copies, unfused)):
            for p, g in zip(ps, grads):
                p.grad = g.clone().contiguous(memory_format=torch.channels_last) if g.dim() == 4 else g.clone()
            opt.step()
    for a, b in zip(params, copies):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float32])
    assert_same_state(fused, unfused, TOLERANCE[torch.float32])

    # The other way: a plain optimizer's checkpoint (its own state only) into a constrained LAWN on the fused step.
    start = make_params(torch.float32)
    plain = BASES[base](start)
    for p in start:
        p.grad = torch.ones_like(p)
    plain.step()
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in start]
    resumed = lawn.LAWN(BASES[base](resumed_params), resumed_params[:-1], free_steps=1)
    resumed.load_state_dict(roundtrip(plain.state_dict()))
    for _ in range(2):  # the free step (the base's own), then the switch and a step on the fused kernel
        for p in resumed_params:
            p.grad = torch.ones_like(p) * 0.1
        resumed.step()
    momentum_key = "exp_avg" if base.startswith("adam") else "momentum_buffer"
    for p in resumed_params[:-1]:
        assert resumed.state[p][momentum_key].abs().sum() > 0
    if base.startswith("adam"):
        assert all(float(resumed.state[p]["step"]) == 3.0 for p in resumed_params)


def test_other_bases_tensors_and_options_keep_todays_paths(kernel_calls):
    """Other bases, a tensor learning rate, fp64 / transposed weights, ``fused=False`` and ``compiled=True`` do not
    use the kernel; in a mixed list the kernel takes what it can and the rest matches the reference."""
    ps = make_params(torch.float32)
    assert lawn.LAWN(torch.optim.RAdam(ps), ps[:1], free_steps=0)._paths.step_kind is None
    assert lawn.LAWN(torch.optim.Adam(ps), ps[:1], free_steps=0, fused=False)._paths.step_kind is None
    assert lawn.LAWN(torch.optim.Adam(ps), ps[:1], free_steps=0, foreach=False)._paths.step_kind is None

    ps = make_params(torch.float32)
    opt = lawn.LAWN(torch.optim.Adam(ps, lr=torch.tensor(1e-2)), ps[:-1], free_steps=0)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    assert kernel_calls == []

    def mixed(**options):
        gen = torch.Generator().manual_seed(5)
        ws = [
            torch.nn.Parameter(torch.randn(4, 6, generator=gen, dtype=torch.float64)),
            torch.nn.Parameter(torch.randn(6, 4, generator=gen).t()),  # transposed: not dense row-major
            torch.nn.Parameter(torch.randn(5, 3, generator=gen)),
        ]
        o = lawn.LAWN(torch.optim.AdamW(ws, lr=1e-2, weight_decay=0.1), ws, free_steps=0, granularity="row", **options)
        for _ in range(3):
            for w in ws:
                w.grad = torch.randn(w.shape, generator=gen, dtype=w.dtype)
            o.step()
        return ws

    got, expected = mixed(), mixed(foreach=False, fused=False)
    assert kernel_calls == [1, 1, 1]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grad_untouched_and_versions_bumped():
    """The fused step stores no projected gradient; autograd sees its writes to the weights."""
    ps = make_params(torch.float32)
    opt = lawn.LAWN(torch.optim.Adam(ps, lr=1e-2), ps[:-1], free_steps=0)
    grads = [torch.randn_like(p) for p in ps]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    versions = [p._version for p in ps]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(ps, grads))
    assert all(p._version > v for p, v in zip(ps, versions))


def _bnnet_run(**options):
    from lawn_helpers import BNNet

    torch.manual_seed(0)
    model = BNNet()
    return model, lawn.LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), model.tail(), free_steps=2, **options)


def test_build_failure_warns_once_and_falls_back(monkeypatch):
    def broken_build():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fused_step, "build", broken_build)
    monkeypatch.setattr(fused_step._Kernel, "module", None)
    monkeypatch.setattr(fused_step._Kernel, "failed", False)
    assert_falls_back_once(
        _bnnet_run(), _bnnet_run(fused=False), match="building the fused step kernel failed.*no compiler here"
    )


def test_nothing_is_built_when_no_tensor_would_use_the_kernel(monkeypatch):
    """An fp64 (or GPU) model on the default: no build, no warning, today's path."""
    monkeypatch.setattr(fused_step, "build", lambda: pytest.fail("the kernel must not be built"))
    monkeypatch.setattr(fused_step._Kernel, "module", None)
    monkeypatch.setattr(fused_step._Kernel, "failed", False)
    w = torch.nn.Parameter(torch.randn(5, 4, dtype=torch.float64))
    opt = lawn.LAWN(torch.optim.Adam([w], lr=1e-2), [w], free_steps=0)
    target = norms(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w.grad = torch.randn_like(w)
        opt.step()
    torch.testing.assert_close(norms(w), target)
