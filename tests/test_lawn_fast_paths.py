"""The fast paths' promises: no host synchronisation, no recompilation per step, a clean compile fallback."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lawn
import lawn.constraint.compiled as constraint_compiled
import lawn.constraint.foreach
from lawn_helpers import BNNet, assert_falls_back_once, batches, train_step

# What `.item()`, `bool(tensor)`, `if tensor:` and friends dispatch to: each one waits for the device.
HOST_SYNCS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal"}


class _HostSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in HOST_SYNCS:
            self.calls.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def _model_and_opt(granularity="tensor", free_steps=2, opt="sgd", **kwargs):
    torch.manual_seed(0)
    model = BNNet()
    if opt == "sgd":  # torch's SGD itself never reads a tensor on the host
        base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        base = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, lawn.LAWN(base, model.tail(), free_steps=free_steps, granularity=granularity, **kwargs)


@pytest.mark.parametrize("path", ["foreach", "foreach_batched", "fused"])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_constrained_steps_never_read_a_tensor_on_the_host(granularity, path, monkeypatch):
    tensor_by_tensor = path != "foreach_batched"
    monkeypatch.setattr(lawn.constraint.foreach, "_tensor_by_tensor", lambda tensors: tensor_by_tensor)
    model, opt = _model_and_opt(granularity, fused=path == "fused")
    data = batches(6)
    for xb, yb in data[:3]:
        train_step(model, opt, xb, yb)
    assert opt.phase == "constrained"
    for xb, yb in data[3:]:
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        with _HostSyncs() as mode:
            opt.step()
        assert mode.calls == []
    # the probe does see a host read when there is one
    with _HostSyncs() as mode:
        bool(torch.ones(()) > 0)
    assert mode.calls


def _graphs():
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_compiled_path_compiles_once_and_never_per_step(granularity):
    model, opt = _model_and_opt(granularity, free_steps=1, opt="adam", compiled=True)
    data = batches(8)
    train_step(model, opt, *data[0])
    train_step(model, opt, *data[1])  # the first constrained step compiles (or finds its graphs cached)
    after_first = _graphs()
    for xb, yb in data[2:]:
        train_step(model, opt, xb, yb)
    assert _graphs() == after_first
    signature = (granularity, *((p.shape, p.dtype, p.device) for _, p in model.tail()))
    assert signature in constraint_compiled._project.signatures
    assert signature in constraint_compiled._retract.signatures


def test_a_compiled_training_step_does_not_recompile_per_step():
    """``torch.compile`` of the whole ``opt.step``: graphs change at the switch, then never again."""
    model, opt = _model_and_opt("tensor", free_steps=2, opt="adam")
    step = torch.compile(opt.step, backend="eager")
    data = batches(10)
    for i, (xb, yb) in enumerate(data):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        step()
        if i == 3:
            settled = _graphs()
    assert opt.phase == "constrained" and _graphs() == settled


def test_compile_failure_warns_once_and_falls_back_to_the_foreach_path(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(constraint_compiled._Compiled, "failed", False)
    for name, function, fallback in (
        ("_project", lawn.constraint.reference.project_all_, lawn.constraint.foreach.foreach_project_onto_tangent_),
        ("_retract", lawn.constraint.reference.retract_all_, lawn.constraint.foreach.foreach_retract_),
    ):
        monkeypatch.setattr(constraint_compiled, name, constraint_compiled._Compiled(function, fallback))

    compiled, plain = _model_and_opt(free_steps=2, compiled=True), _model_and_opt(free_steps=2)
    assert_falls_back_once(compiled, plain, match="torch.compile of the norm constraint failed.*no compiler here")


def test_signatures_past_the_budget_run_on_the_foreach_path(monkeypatch):
    calls = []
    project = constraint_compiled._Compiled(
        lambda *args: calls.append("compiled"), lambda *args: calls.append("fallback")
    )
    project.compiled = project.function  # stands in for the compiled function: we count calls, not kernels
    monkeypatch.setattr(constraint_compiled, "_budget", lambda: 1)
    a, b = [torch.zeros(3)], [torch.zeros(4)]
    project(a, a, "tensor")
    project(b, b, "tensor")
    project(a, a, "tensor")
    assert calls == ["compiled", "fallback", "compiled"]


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_projection_matches_the_reference_when_weights_change_behind_its_back(granularity):
    """The projection computes ‖w‖ every step, so a model load, a checkpoint load or a manual rescale between
    steps leaves the fast path equal to the reference."""
    model, opt = _model_and_opt(granularity, free_steps=2)
    torch.manual_seed(0)
    reference_model = BNNet()
    reference = lawn.LAWN(
        torch.optim.SGD(reference_model.parameters(), lr=0.05, momentum=0.9),
        reference_model.tail(),
        free_steps=2,
        granularity=granularity,
        foreach=False,
    )
    data = batches(8)
    for xb, yb in data[:4]:
        train_step(model, opt, xb, yb)
        train_step(reference_model, reference, xb, yb)
    model.load_state_dict(reference_model.state_dict())
    opt.load_state_dict(copy.deepcopy(reference.state_dict()))

    for step, (xb, yb) in enumerate(data[4:]):
        if step % 2 == 0:  # off the spheres, behind the optimizer's back
            with torch.no_grad():
                model.head.weight.mul_(1.5)
                reference_model.head.weight.mul_(1.5)
        train_step(model, opt, xb, yb)
        train_step(reference_model, reference, xb, yb)
        for a, b in zip(model.parameters(), reference_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
