"""The Triton fused step against the reference path, in Triton's interpreter on CPU tensors (run as a script).

``tests/test_fused_step_triton.py`` runs this once in a subprocess with ``TRITON_INTERPRET=1`` (it must be set
before ``triton.jit`` decorates the kernels) and checks each case's line of JSON. Each case runs LAWN twice over
the same parameters and gradients: once with every constrained tensor routed to the Triton kernels
(``paths.backend`` patched to answer ``"triton"`` for CPU tensors), once on the reference path
(``foreach=False, fused=False``: per-tensor projection, the base's own ``step()``, per-tensor retraction), and
compares weights, every state tensor (dtype, layout, values) and the norms after the last retraction.

    TRITON_INTERPRET=1 PYTHONPATH=src:tests python tests/triton_interpret_cases.py [case names...]
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

import lawn
from fused_bases import BASES

# Small tiling limits, so that tiny shapes take every code path of the kernels: several rows per program, rows
# walked in chunks, large tensors split over several programs (with fewer programs than partial slots).
# With TINY_TILING: (6, 5) per row: 4 rows per program (the second program half empty), per tensor: one program
# walking 2 chunks; (4, 3, 3, 3): rows of 2 chunks, per tensor 2 programs of 4 chunks each (the three-kernel
# path, 2 of 16 partial slots used); (3, 20): rows of 2 chunks, per tensor 2 programs of 2 chunks.
TINY_TILING = {"ONE_CHUNK_MAX": 16, "TILE": 64, "CHUNK": 16, "MAX_PROGRAMS": 2}
SHAPES = [(6, 5), (4, 3, 3, 3)]  # a linear layer, a channels-last conv
CHUNKED_SHAPES = [(6, 5), (4, 3, 3, 3), (3, 20)]
LONG_SHAPES = [(3, 12000)]  # with the default tiling: rows > ONE_CHUNK_MAX, a tensor > SMALL_TENSOR
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 2e-2, "atol": 6e-2}}
STEPS = {torch.float32: 20, torch.bfloat16: 8}  # 2 free steps (the base's own), then the constrained ones
SHORT = 5  # steps of the cases that exercise the tiling (the interpreter is slow on many small programs)


@dataclass
class Case:
    base: str
    granularity: str
    dtype: torch.dtype
    shapes: list[tuple[int, ...]] = field(default_factory=lambda: list(SHAPES))
    tiling: dict[str, int] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    host_step: bool = False  # Adam's `step` read on the host (as for torch's default Adam on CUDA)
    tag: str = ""

    @property
    def steps(self) -> int:
        if self.tiling or self.shapes == LONG_SHAPES:
            return SHORT
        return STEPS[torch.bfloat16] if self.options else STEPS[self.dtype]

    @property
    def name(self) -> str:
        dtype = "fp32" if self.dtype == torch.float32 else "bf16"
        parts = [self.base, self.granularity, dtype] + ([self.tag] if self.tag else [])
        return "-".join(parts)


def cases() -> list[Case]:
    """Every base, both granularities, fp32 and bf16, with and without the projection (the default tiling); the
    other code paths of the kernels (TINY_TILING, long rows, Adam's ``step`` on the host) for bases that
    together cover every branch of the update."""
    out: list[Case] = []
    chunked = {"shapes": CHUNKED_SHAPES, "tiling": TINY_TILING}
    no_projection = {"project_gradient": False}
    for i, base in enumerate(BASES):
        for granularity in ("tensor", "row"):
            for dtype in (torch.float32, torch.bfloat16):
                out.append(Case(base, granularity, dtype))
        out.append(Case(base, ("tensor", "row")[i % 2], torch.float32, options=no_projection, tag="no_proj"))
    fp32 = {"tensor": ("adam_l2_amsgrad_maximize", "sgd_nesterov_l2"), "row": ("adamw_fused", "sgd_plain")}
    bf16 = {"tensor": "adamw_amsgrad", "row": "sgd_dampening_maximize"}
    no_proj = {"tensor": "sgd_momentum", "row": "adam"}
    for granularity in ("tensor", "row"):
        for base in fp32[granularity]:
            out.append(Case(base, granularity, torch.float32, **chunked, tag="chunked"))
        out.append(Case("adam_l2_amsgrad_maximize", granularity, torch.float32, LONG_SHAPES, tag="long"))
        out.append(Case(bf16[granularity], granularity, torch.bfloat16, **chunked, tag="chunked"))
        out.append(Case(no_proj[granularity], granularity, torch.float32, **chunked, options=no_projection,
                        tag="chunked-no_proj"))  # fmt: skip
        out.append(Case("adamw_amsgrad", granularity, torch.float32, **chunked, host_step=True, tag="host_step"))
    for base in ("adamw_fused", "sgd_momentum"):
        out.append(Case(base, "row", torch.float32, options={"retract_every": 3}, tag="wrs"))
    return out


def make_params(case: Case, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in [*case.shapes, (7,)]:
        x = torch.randn(shape, generator=gen)
        if len(shape) == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        params.append(torch.nn.Parameter(x.to(case.dtype)))
    return params


def run(case: Case, **engine_options: Any) -> tuple[list[torch.nn.Parameter], lawn.LAWN]:
    """LAWN over ``make_params`` (all but the bias constrained), a fixed sequence of random gradients."""
    params = make_params(case)
    kind = lawn.NormConstraint if "retract_every" in case.options else lawn.LAWN
    opt = kind(
        BASES[case.base](params), params[:-1], free_steps=2, granularity=case.granularity,
        **case.options, **engine_options,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    for _ in range(case.steps):
        for p in params:
            g = (torch.randn(p.shape, generator=gen) * 0.1).to(case.dtype)
            p.grad = g.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else g
        opt.step()
    return params, opt


def compare(case: Case, got: tuple[list, lawn.LAWN], expected: tuple[list, lawn.LAWN]) -> None:
    tolerance = TOLERANCE[case.dtype]
    for a, b in zip(got[0], expected[0]):
        assert a.dtype == b.dtype and a.stride() == b.stride()
        torch.testing.assert_close(a.float(), b.float(), **tolerance)
    opt_a, opt_b = got[1], expected[1]
    for p_a, p_b in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
        state_a, state_b = opt_a.state[p_a], opt_b.state[p_b]
        assert sorted(state_a) == sorted(state_b), (sorted(state_a), sorted(state_b))
        for key, value in state_b.items():
            mine = state_a[key]
            layout = (mine.dtype, mine.shape, mine.stride(), mine.device)
            assert layout == (value.dtype, value.shape, value.stride(), value.device), (key, layout)
            torch.testing.assert_close(mine.float(), value.float(), **tolerance, msg=lambda m, key=key: f"{key}: {m}")
    if case.options.get("retract_every", 1) == 1:  # retracted after the last step: on the spheres
        for name, target in opt_a.target_norms.items():
            p = dict(opt_a.constrained_parameters)[name]
            rtol = 1e-5 if case.dtype == torch.float32 else 1e-2
            torch.testing.assert_close(lawn.norms(p, case.granularity), target, rtol=rtol, atol=0)


def run_case(case: Case) -> dict[str, Any]:
    import lawn.constraint.fused_step as fused_step
    import lawn.constraint.fused_step_triton as fused_step_triton

    saved = {name: getattr(fused_step_triton, name) for name in TINY_TILING}
    saved_step = fused_step_triton._step_in_kernel
    calls: list[int] = []
    run_kernel = fused_step.step

    def counted(kernel, kind, params, *args, **kwargs):
        assert kernel is fused_step_triton, "a tensor went to another kernel than the Triton one"
        calls.append(len(params))
        return run_kernel(kernel, kind, params, *args, **kwargs)

    started = time.perf_counter()
    try:
        for name, value in case.tiling.items():
            setattr(fused_step_triton, name, value)
        if case.host_step:
            fused_step_triton._step_in_kernel = lambda step, w: False
        fused_step.step = counted
        got = run(case)
        fused_step.step = run_kernel
        expected = run(case, foreach=False, fused=False)
        constrained_steps = case.steps - 2
        assert calls == [len(case.shapes)] * constrained_steps, f"Triton kernel calls: {calls}"
        compare(case, got, expected)
        ok, error = True, ""
    except Exception:  # reported to the test, which fails with it
        ok, error = False, traceback.format_exc(limit=8)
    finally:
        fused_step.step = run_kernel
        fused_step_triton._step_in_kernel = saved_step
        for name, value in saved.items():
            setattr(fused_step_triton, name, value)
    return {"case": case.name, "ok": ok, "error": error, "seconds": round(time.perf_counter() - started, 3)}


# ----------------------------------------------------------------------------- launches per step
LAUNCH_SHAPES = [(6, 5), (4, 3, 3, 3), (3, 20)]  # three row-length classes, two alignment classes per tensor
FEW, MANY = 3, 60  # weights: the launches per step must not differ


def launch_cases() -> list[str]:
    """``launches-<base>-<granularity>`` for every base and both granularities."""
    return [f"launches-{base}-{granularity}" for base in BASES for granularity in ("tensor", "row")]


def launches_per_step(base: str, granularity: str, weights: int) -> tuple[list[int], list[torch.nn.Parameter]]:
    """Kernel launches in each constrained step of LAWN over ``weights`` weights (shapes cycling through
    ``LAUNCH_SHAPES``), with the weights after them; the Triton path when ``paths.backend`` says so. One
    step; two for SGD with momentum (its buffer's first step is another kernel variant)."""
    import lawn.constraint.fused_step_triton as fused_step_triton

    gen = torch.Generator().manual_seed(weights)
    shapes = [LAUNCH_SHAPES[i % len(LAUNCH_SHAPES)] for i in range(weights)]
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in shapes]
    opt = lawn.LAWN(BASES[base](params), params, free_steps=0, granularity=granularity)
    steps = 2 if isinstance(opt.base, torch.optim.SGD) and opt.base.defaults["momentum"] else 1
    grads = [[torch.randn(shape, generator=gen) * 0.1 for shape in shapes] for _ in range(steps)]
    counts = []
    launch = fused_step_triton._launch

    def counted(*args: Any, **options: Any) -> None:
        counts[-1] += 1
        launch(*args, **options)

    fused_step_triton._launch = counted
    try:
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            counts.append(0)
            opt.step()
    finally:
        fused_step_triton._launch = launch
    return counts, params


def run_launch_case(name: str) -> dict[str, Any]:
    """The launches per step with ``FEW`` and ``MANY`` weights: equal, and the ``MANY`` weights' values those of
    the reference path."""
    import lawn.constraint.paths as paths

    _, base, granularity = name.split("-")
    started = time.perf_counter()
    try:
        few, _ = launches_per_step(base, granularity, FEW)
        many, params = launches_per_step(base, granularity, MANY)
        assert few == many and 0 < max(many) <= 6, f"launches per step: {few} with {FEW} weights, {many} with {MANY}"
        route = paths.backend
        paths.backend = lambda w, cuda=False: None  # the reference path
        try:
            no_kernel, expected = launches_per_step(base, granularity, MANY)
        finally:
            paths.backend = route
        assert not any(no_kernel), no_kernel
        for got, want in zip(params, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        ok, error = True, ""
    except Exception:  # reported to the test, which fails with it
        few = many = []
        ok, error = False, traceback.format_exc(limit=8)
    seconds = round(time.perf_counter() - started, 3)
    return {"case": name, "ok": ok, "error": error, "seconds": seconds, "few": few, "many": many}


def main(names: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1 (before triton is imported)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    # 0/0 in the padding rows of a tile (its coefficient and scale are then replaced, as for any non-finite one)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton.runtime.interpreter")
    import lawn.constraint.fused_step as fused_step
    import lawn.constraint.paths as paths

    def no_cpp_build():
        raise AssertionError("the C++ kernel must not be built here")

    fused_step.build = no_cpp_build
    paths.backend = lambda w, cuda=False: "triton"  # the interpreter runs the Triton kernels on CPU tensors
    chosen = [c for c in cases() if not names or c.name in names]
    for case in chosen:
        print(json.dumps(run_case(case)), flush=True)
    for name in launch_cases():
        if not names or name in names:
            print(json.dumps(run_launch_case(name)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
