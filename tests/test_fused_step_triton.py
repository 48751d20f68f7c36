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

from triton_interpret_cases import cases  # noqa: E402  (after the skip: it needs nothing from triton itself)

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
CASES = [case.name for case in cases()]


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    """Every case's result, from one interpreter subprocess (about 25 s of CPU on a busy 2-core machine)."""
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
def _variants() -> list[tuple[str, str, dict[str, object], int]]:
    """(kernel, dtype, constexprs, warps): each kernel with each optimizer's branches, projection and retraction on
    and off, Adam's ``step`` read in the kernel and passed by the host, the largest tiles; fp32 and bf16."""
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
    out: list[tuple[str, str, dict[str, object], int]] = []
    for dtype in ("fp32", "bf16"):
        out += [
            ("_rows_kernel", dtype, {**adam, **both, **one_chunk}, 16),
            ("_rows_kernel", dtype, {**adam, **both, **chunked}, 8),
            ("_tensor_update_kernel", dtype, {**adam, **both, **tensor}, 8),
            ("_tensor_dot_kernel", dtype, {"BLOCK": 2048}, 8),
            ("_tensor_scale_kernel", dtype, {"BLOCK": 2048, "PARTS": 1024}, 8),
        ]
    out += [
        ("_rows_kernel", "bf16", {**adam_host, **neither, **short_rows}, 8),
        ("_tensor_update_kernel", "bf16", {**adam_host, **neither, **tensor}, 8),
        ("_rows_kernel", "bf16", {**nesterov, **both, **short_rows}, 8),
        ("_rows_kernel", "fp32", {**first, **neither, **chunked}, 8),
        ("_tensor_update_kernel", "bf16", {**first, **both, **tensor}, 8),
        ("_tensor_update_kernel", "fp32", {**plain, **neither, **tensor}, 8),
    ]
    return out


def _signature(kernel, dtype: str, constexprs: dict[str, object]) -> dict[str, str]:
    """Every argument that is not a constexpr: pointers to the weights' dtype (fp32 for step, target, partials),
    i64 sizes, fp32 hyper-parameters."""
    import inspect

    signature = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            continue
        if name.endswith("_ptr"):
            signature[name] = "*fp32" if name in ("step_ptr", "target_ptr", "part_ptr") else f"*{dtype}"
        elif name in ("rows", "cols", "n", "chunks"):
            signature[name] = "i64"
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
    for name, dtype, constexprs, warps in _variants():
        fn = getattr(kernels, name)
        source = ASTSource(fn=fn, signature=_signature(fn, dtype, constexprs), constexprs=constexprs)
        compiled = triton.compile(source, target=target, options={"num_warps": warps, "enable_fp_fusion": kernels.FMA})
        assert compiled.asm.get("cubin"), (name, dtype, constexprs)


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
