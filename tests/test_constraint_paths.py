"""Every execution path of a constrained step against the reference, step by step, for every option (one table).

The paths (:mod:`lawn.constraint.paths`): foreach, compiled, the C++ fused step (Adam and SGD), the C++
projection/retraction kernel (``fused=True`` around a base the fused step does not implement). The reference:
the same base and options with ``foreach=False, fused=False`` (:mod:`lawn.constraint.reference`, one tensor at a
time). The weights: a linear layer, a channels-last conv, a transposed-conv weight whose rows lie along dim 1 (a
``(name, tensor, output_dim)`` entry), a transposed (non-contiguous) matrix that no kernel takes, and an
unconstrained bias; after each step every weight and every state tensor matches the reference's.
"""

from __future__ import annotations

import pytest
import torch

import lawn
import lawn.constraint.fused_step as fused_step
from lawn.constraint import norms

SHAPES = [(6, 5), (4, 3, 3, 3), (3, 5, 2), (5, 4)]  # (3, 5, 2): rows along dim 1; (5, 4): stored transposed
ROW_DIMS = [0, 0, 1, 0]
STEPS = 7  # 2 free steps (the base's own), then constrained ones (retract_every=3: retractions after 3 and 6)
BASES = {
    "adam": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=1e-2),  # no fused step: the kernel path around its own step
}
#: path → (its engine options, the bases it runs with)
PATHS = {
    "foreach": ({"fused": False}, ["adam", "radam"]),
    "fused_step": ({}, ["adam", "sgd"]),
    "kernel": ({"fused": True}, ["radam"]),
    "compiled": ({"compiled": True}, ["adam"]),
}
#: every option, each away from its default, alone and together
OPTIONS = {
    "defaults": {},
    "no_projection": {"project_gradient": False},
    "target_scale": {"target_scale": 0.5},
    "retract_every": {"retract_every": 3},
    "fixed_target": {"target_norm": 2.0},
    "together": {"project_gradient": False, "target_scale": 2.0, "retract_every": 3, "target_norm": 0.5},
}
COMPILED_OPTIONS = ("defaults", "together")  # compiling takes seconds per case: two are enough


def _cases() -> list:
    cases = []
    for path, (_, bases) in PATHS.items():
        for options in OPTIONS:
            if path == "compiled" and options not in COMPILED_OPTIONS:
                continue
            for granularity in ("tensor", "row"):
                for base in bases:
                    cases.append(
                        pytest.param(path, base, options, granularity, id=f"{path}-{base}-{options}-{granularity}")
                    )
    return cases


def _params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in [*SHAPES, (7,)]:
        x = torch.randn(shape, generator=gen)
        if len(shape) == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        elif shape == (5, 4):
            x = torch.randn(4, 5, generator=gen).t()
        params.append(torch.nn.Parameter(x))
    return params


def _engine(base: str, granularity: str, options: dict, **path_options) -> tuple[list, lawn.NormConstraint]:
    params = _params()
    entries = [(f"w{k}", p, dim) for k, (p, dim) in enumerate(zip(params, ROW_DIMS))]
    opt = lawn.NormConstraint(
        BASES[base](params), entries, free_steps=2, granularity=granularity, **options, **path_options
    )
    return params, opt


def _gradients(params: list[torch.nn.Parameter], gen: torch.Generator) -> list[torch.Tensor]:
    grads = []
    for p in params:
        g = torch.randn(p.shape, generator=gen) * 0.1
        grads.append(torch.empty_like(p).copy_(g))  # laid out like the weight
    return grads


@pytest.mark.parametrize(("path", "base", "options", "granularity"), _cases())
def test_every_path_matches_the_reference_step_by_step(path, base, options, granularity, monkeypatch):
    fused_calls: list[int] = []
    original = fused_step.step

    def counted(kernel, kind, params, *args, **kwargs):
        fused_calls.append(len(params))
        return original(kernel, kind, params, *args, **kwargs)

    monkeypatch.setattr(fused_step, "step", counted)
    path_options, _ = PATHS[path]
    got_params, got = _engine(base, granularity, OPTIONS[options], **path_options)
    ref_params, ref = _engine(base, granularity, OPTIONS[options], foreach=False, fused=False)
    assert ref._paths.unfused == "reference" and ref._paths.step_kind is None
    assert got._paths.unfused == {"foreach": "foreach", "fused_step": "foreach", "kernel": "kernel"}.get(path, path)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        for p, q, g in zip(got_params, ref_params, _gradients(got_params, gen)):
            p.grad, q.grad = g.clone(), g.clone()
        got.step()
        ref.step()
        for k, (a, b) in enumerate(zip(got_params, ref_params)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, k=k, s=step: f"w{k}, step {s}: {m}")
            assert a.stride() == b.stride()
        for a, b in zip(got_params, ref_params):
            for key, value in ref.state[b].items():
                torch.testing.assert_close(got.state[a][key], value, rtol=1e-5, atol=1e-6)
    constrained_steps = STEPS - 2
    if path == "fused_step":  # the fused step took the dense weights with rows along dim 0, at every step
        taken = 2 if granularity == "row" else 3  # per row, the dim-1 weight goes the unfused way
        assert fused_calls == [taken] * constrained_steps
    else:
        assert fused_calls == []
    if OPTIONS[options].get("retract_every", 1) == 1:  # on the spheres after the last step
        for name, target in got.target_norms.items():
            p = dict(got.constrained_parameters)[name]
            rows = p.movedim(1, 0) if name == "w2" and granularity == "row" else p
            torch.testing.assert_close(norms(rows, granularity), target, rtol=1e-5, atol=0)
