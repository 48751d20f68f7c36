"""The Triton fused step (``lawn.constraint.fused_step_triton``), checked without a GPU:

* in Triton's interpreter on CPU tensors, through LAWN's own dispatch, against the reference path for every
  supported base and option (one subprocess runs every case of ``tests/triton_interpret_cases.py``: the
  interpreter needs ``TRITON_INTERPRET=1`` before the kernels are decorated);
* compiled ahead of time for an sm_90 GPU (Triton's compiler and bundled ``ptxas``, no GPU needed), so that
  what the interpreter accepts also compiles;
* the routing: CUDA tensors to Triton where it is installed, CPU tensors to C++, others to the unfused path;
  and ``import lawn`` does not import triton.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lawn.constraint.fused_step as fused_step
import lawn.constraint.paths as paths

triton = pytest.importorskip("triton", reason="triton is not installed (pip install 'lawn[triton]')")

from triton_interpret_cases import FEW, MANY, cases, launch_cases  # noqa: E402  (after the skip: no triton needed)

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
CASES = [case.name for case in cases()]


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    """Every case's result, from one interpreter subprocess (about a minute of CPU)."""
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, str(TESTS / "triton_interpret_cases.py")],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = {}
    for line in done.stdout.splitlines():
        result = json.loads(line)
        results[result["case"]] = result
    return results


@pytest.mark.parametrize("case", CASES)
def test_triton_step_equals_the_reference_path(case, interpreted):
    """Weights, every state tensor (keys, dtype, layout, values) and the norms after retraction match the reference
    path (projection, the base's own step, retraction) over the case's steps; every constrained tensor went
    through the Triton kernels at every constrained step."""
    result = interpreted.get(case)
    assert result is not None, f"{case}: no result from the interpreter run"
    assert result["ok"], f"{case}:\n{result['error']}"


@pytest.mark.parametrize("case", launch_cases())
def test_launches_per_step_do_not_grow_with_the_number_of_weights(case, interpreted):
    """With 3 and with 60 constrained weights (the same shapes repeated), every base and granularity: the same
    number of kernel launches in each step, at most 6, and the 60 weights end where the reference path ends."""
    result = interpreted.get(case)
    assert result is not None, f"{case}: no result from the interpreter run"
    assert result["ok"], f"{case}:\n{result['error']}"
    assert result["few"] == result["many"] and max(result["many"]) <= 6, (FEW, result["few"], MANY, result["many"])


def test_the_cases_cover_every_base_and_option():
    from triton_interpret_cases import BASES

    listed = cases()
    for base in BASES:
        for granularity in ("tensor", "row"):
            for dtype in (torch.float32, torch.bfloat16):
                assert any(c.base == base and c.granularity == granularity and c.dtype == dtype for c in listed)
        assert any(c.base == base and c.options.get("project_gradient") is False for c in listed)
    for granularity in ("tensor", "row"):
        assert any(c.granularity == granularity and c.tiling for c in listed)
        assert any(c.granularity == granularity and c.host_step for c in listed)


# ----------------------------------------------------------------------------- compiled for a GPU
def _variants() -> list[tuple[str, dict[str, object], int]]:
    """(kernel, constexprs, warps): each kernel with each optimizer's branches, projection and retraction on and
    off, Adam's ``step`` read in the kernel (fp32 and fp64) and passed by the host, the largest tiles; fp32 and
    bf16 weights, with and without the 16-byte alignment hints."""
    import triton.language as tl

    adam = {"ADAM": True, "AMSGRAD": True, "MOMENTUM": False, "FIRST": False, "NESTEROV": False}
    adam_host = {**adam, "AMSGRAD": False, "STEP_ON_DEVICE": False}
    adam |= {"STEP_ON_DEVICE": True}
    nesterov = {"ADAM": False, "AMSGRAD": False, "MOMENTUM": True, "FIRST": False, "NESTEROV": True}
    nesterov |= {"STEP_ON_DEVICE": False}
    first = {**nesterov, "FIRST": True, "NESTEROV": False}
    plain = {**nesterov, "MOMENTUM": False, "NESTEROV": False}
    both, neither = {"PROJECT": True, "RETRACT": True}, {"PROJECT": False, "RETRACT": False}
    one_chunk = {"ROWS": 1, "BLOCK": 4096, "ONE_CHUNK": True}
    short_rows = {"ROWS": 16, "BLOCK": 128, "ONE_CHUNK": True}
    chunked = {"ROWS": 1, "BLOCK": 2048, "ONE_CHUNK": False}
    tensor = {"BLOCK": 2048, "PARTS": 1024}
    out: list[tuple[str, dict[str, object], int]] = []
    for dt, vec in ((tl.float32, 4), (tl.bfloat16, 8), (tl.bfloat16, 1)):
        types = {"DT": dt, "VEC": vec}
        step = {**types, "STEP_DT": tl.float32}
        out += [
            ("_rows_kernel", {**adam, **both, **one_chunk, **step}, 16),
            ("_rows_kernel", {**adam, **both, **chunked, **step}, 8),
            ("_tensor_update_kernel", {**adam, **both, **tensor, **step}, 8),
            ("_tensor_dot_kernel", {"BLOCK": 2048, **types}, 8),
            ("_tensor_scale_kernel", {"BLOCK": 2048, "PARTS": 1024, **types}, 8),
        ]
    fp32, bf16 = (
        {"DT": tl.float32, "VEC": 4, "STEP_DT": tl.float32},
        {"DT": tl.bfloat16, "VEC": 8, "STEP_DT": tl.float32},
    )
    out += [
        ("_rows_kernel", {**adam, **both, **short_rows, **fp32, "STEP_DT": tl.float64}, 8),
        ("_rows_kernel", {**adam_host, **neither, **short_rows, **bf16}, 8),
        ("_tensor_update_kernel", {**adam_host, **neither, **tensor, **bf16}, 8),
        ("_rows_kernel", {**nesterov, **both, **short_rows, **bf16}, 8),
        ("_rows_kernel", {**first, **neither, **chunked, **fp32}, 8),
        ("_tensor_update_kernel", {**first, **both, **tensor, **bf16}, 8),
        ("_tensor_update_kernel", {**plain, **neither, **tensor, **fp32}, 8),
    ]
    return out


def _signature(kernel, constexprs: dict[str, object]) -> dict[str, str]:
    """Every argument that is not a constexpr: the int64 tables (tasks, addresses, sizes), the fp32 partials,
    fp32 hyper-parameters."""
    import inspect

    signature = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            continue
        if name.endswith("_ptr"):
            signature[name] = "*fp32" if name == "part_ptr" else "*i64"
        else:
            signature[name] = "fp32"
    return signature


def test_kernels_compile_for_an_sm90_gpu():
    """The kernels' variants compile to a cubin for sm_90 (Triton's own compiler and ptxas; no GPU needed)."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as error:  # pragma: no cover - another triton's internal layout
        pytest.skip(f"this triton has no ahead-of-time compile API ({error})")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 in this process: the kernels are interpreted functions here")
    import lawn.constraint.fused_step_triton as kernels

    target = GPUTarget("cuda", 90, 32)
    for name, constexprs, warps in _variants():
        fn = getattr(kernels, name)
        source = ASTSource(fn=fn, signature=_signature(fn, constexprs), constexprs=constexprs)
        compiled = triton.compile(source, target=target, options={"num_warps": warps, "enable_fp_fusion": kernels.FMA})
        assert compiled.asm.get("cubin"), (name, constexprs)


# ----------------------------------------------------------------------------- launch plans (no kernel runs)
def _slots(shapes, dtype=torch.float32):
    """A launch group of weights of these shapes, with gradients and Adam's two state tensors."""
    import lawn.constraint.fused_step_triton as kernels

    ws = [torch.empty(shape, dtype=dtype) for shape in shapes]
    state = [[torch.empty_like(w) for w in ws] for _ in range(3)]
    return kernels._Slots(list(range(len(ws))), ws, *state)


def test_a_plan_is_built_once_and_only_its_gradient_table_follows_moved_gradients():
    """The tables are cached on the tensors' addresses and layouts: the same tensors reuse them (their checks do
    not run again); a gradient at a new address only replaces the small gradient table (the new gradient
    checked); one that breaks the layout's 16-byte alignment, or another moved storage, gets a new plan (checked
    again), with the same task tables if sizes and alignment allow; another shape or granularity, other launches."""
    import lawn.constraint.fused_step_triton as kernels

    slots = _slots([(6, 5), (4, 3, 3, 3), (4, 8)])  # per row: rows of 5, 27 (unaligned) and 8 (aligned) floats
    checks = []
    first = kernels._plan(slots, True, checks.append)
    assert kernels._plan(slots, True, checks.append) is first and len(checks) == 1
    assert first.vecs == [1, 1, 4] and first.grads.tolist() == [g.data_ptr() for g in slots.g]
    slots.g[1] = torch.empty_like(slots.g[1])  # a new gradient tensor, as after zero_grad(set_to_none=True)
    assert kernels._plan(slots, True, checks.append) is first and len(checks) == 1
    assert first.grads.tolist() == [g.data_ptr() for g in slots.g]
    slots.g[0] = torch.empty(6, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"grad\[0\]: expected a tensor of the weight's dtype"):
        kernels._plan(slots, True, checks.append)
    slots.g[0] = torch.empty(6, 5)
    slots.g[2] = torch.empty(33)[1:].view(4, 8)  # 4 bytes past a 16-byte boundary
    second = kernels._plan(slots, True, checks.append)
    assert second is not first and second.vecs == [1, 1, 1] and len(checks) == 2
    slots.a[0] = torch.empty_like(slots.a[0])  # a moved state tensor: new addresses, same task tables
    third = kernels._plan(slots, True, checks.append)
    assert third is not second and third.layout is second.layout and len(checks) == 3
    slots.w[0] = slots.w[0].view(5, 6)  # same storage, another shape
    fourth = kernels._plan(slots, True, checks.append)
    assert fourth.layout is not third.layout and len(checks) == 4
    assert kernels._plan(slots, False, checks.append).layout is not fourth.layout and len(checks) == 5


def test_model_shapes_take_a_few_launches_whatever_the_number_of_weights():
    """Per row one launch per row-length class, per tensor three: ResNet-18's 21 weights and twice them take the
    same launches (9 per row, 3 per tensor), a ViT-B block 2 per row."""
    import lawn.constraint.fused_step_triton as kernels

    overhead = _shapes()
    resnet = [shape for _, shape in overhead.resnet18_shapes() if len(shape) >= 2]
    vit = [shape for _, shape in overhead.vit_shapes(1) if len(shape) >= 2]
    for shapes, per_row, launches in ((resnet, True, 9), (resnet, False, 3), (vit, True, 2)):
        for dtype in (torch.float32, torch.bfloat16):
            once = kernels._plan(_slots(shapes, dtype), per_row, lambda entries: None).layout
            twice = kernels._plan(_slots(shapes * 2, dtype), per_row, lambda entries: None).layout
            assert len(once.launches) == len(twice.launches) == launches
            programs = sum(launch.grid for launch in once.launches)
            assert sum(launch.grid for launch in twice.launches) == 2 * programs


def _shapes():
    import importlib.util

    path = TESTS.parent / "benchmarks" / "step_overhead.py"
    spec = importlib.util.spec_from_file_location("step_overhead", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("step_overhead", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bad_input_is_refused_before_any_state_changes():
    """A target of the wrong dtype, lists of different lengths, a gradient of another dtype: a ValueError that names the
    culprit, and Adam's ``step`` is not incremented."""
    import lawn.constraint.fused_step_triton as kernels

    ws = [torch.zeros(3, 4), torch.zeros(2, 5)]
    state = [torch.zeros_like(w) for w in ws]
    steps = [torch.tensor(4.0), torch.tensor(4.0)]
    targets = [torch.ones(3), torch.ones(2, dtype=torch.float64)]
    options = dict(
        lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=True, amsgrad=False,
        maximize=False, project=True, retract=True, per_row=True,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"target\[1\]: expected contiguous float32"):
        kernels.adam_(ws, state, state, state, [], steps, targets, **options)
    with pytest.raises(ValueError, match=r"target\[0\]: expected 3 value\(s\), got 1"):
        kernels.adam_(ws, state, state, state, [], steps, [torch.ones(1), torch.ones(2)], **options)
    with pytest.raises(ValueError, match="adam_: lists differ in length"):
        kernels.adam_(ws, state[:1], state, state, [], steps, targets, **options)
    with pytest.raises(ValueError, match=r"grad\[1\]: expected a tensor of the weight's dtype"):
        grads = [state[0], state[1].double()]
        kernels.adam_(ws, grads, state, state, [], steps, [torch.ones(3), torch.ones(2)], **options)
    assert [float(s) for s in steps] == [4.0, 4.0]


# ----------------------------------------------------------------------------- routing
def test_routing_sends_cuda_to_triton_cpu_to_cpp_and_the_rest_to_the_unfused_path(monkeypatch):
    """The device decides (``backend`` looks only at the device type); without triton, CUDA is not taken."""
    cpu = torch.empty(2, 3)
    meta = torch.empty(2, 3, device="meta")  # neither CPU nor CUDA

    class Device:
        type = "cuda"

    class CudaLike:  # what backend() reads of a CUDA tensor
        device = Device()

    assert paths.backend(cpu) == "cpu"
    assert paths.backend(meta) is None
    assert paths.backend(CudaLike()) is None  # the default (fused=None): CUDA takes the torch-native path
    assert paths.backend(CudaLike(), cuda=True) == "triton"  # fused=True; triton installed (importorskip)
    monkeypatch.setattr(paths, "triton_installed", lambda: False)
    assert paths.backend(CudaLike(), cuda=True) is None
    assert paths.backend(cpu) == "cpu"


def test_takes_routes_a_weight_by_backend_and_checks_steps_device(monkeypatch):
    """``_takes`` answers the backend; Adam's ``step`` may live on the CPU (torch's default) or on the weight's
    device (fused / capturable), nowhere else."""
    w = torch.nn.Parameter(torch.randn(3, 4))
    w.grad = torch.randn(3, 4)
    keys = fused_step._STATE_KEYS["adam"]
    assert paths._takes(w, {}, keys, False) == "cpu"
    assert paths._takes(w, {"step": torch.tensor(1.0)}, keys, True) == "cpu"
    monkeypatch.setattr(paths, "backend", lambda t, cuda=False: "triton")
    assert paths._takes(w, {"step": torch.tensor(1.0)}, keys, True) == "triton"
    assert paths._takes(w, {"step": torch.tensor(1.0, device="meta")}, keys, True) is None
    assert paths._takes(w, {"exp_avg": torch.zeros(3, 4, dtype=torch.float64)}, keys, True) is None
    w.grad = None
    assert paths._takes(w, {}, keys, False) is None


def test_import_lawn_does_not_import_triton():
    code = "import sys, lawn, lawn.constraint.fused_step, lawn.constraint.paths; print('triton' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "False"


def test_new_adam_state_puts_step_where_torch_does():
    """A ``step`` the fused step creates lives where ``torch.optim.Adam`` would put it: on the weight's device
    with ``fused`` or ``capturable`` (read there by the Triton kernels), else on the CPU ("meta" stands in for
    a GPU here)."""
    w = torch.nn.Parameter(torch.empty(3, 4, device="meta"))
    for group, device in (
        ({"amsgrad": False, "fused": True}, "meta"),
        ({"amsgrad": False, "capturable": True, "fused": None}, "meta"),
        ({"amsgrad": True, "capturable": False, "fused": None}, "cpu"),
    ):
        state = fused_step._adam_state(w, {}, group)
        assert state["step"].device.type == device and state["step"].dtype == torch.float32
        assert state["exp_avg"].device.type == "meta" and ("max_exp_avg_sq" in state) == group["amsgrad"]


def test_cuda_weights_take_the_triton_step_only_when_fused_is_true():
    """Until a GPU run meets docs/performance_gpu.md's goals, ``fused=None`` keeps CUDA on the torch-native path."""
    import lawn

    w = torch.nn.Parameter(torch.randn(3, 4))
    for fused, cuda in ((None, False), (True, True)):
        opt = lawn.LAWN(torch.optim.Adam([w], lr=1e-3), [w], free_steps=0, fused=fused)
        assert opt._paths.cuda is cuda
