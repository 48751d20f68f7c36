"""The step-overhead benchmark runs end to end and writes its report (tiny shapes; the numbers mean nothing)."""

import importlib.util
import re
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "step_overhead.py"


def test_benchmark_writes_every_table(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("step_overhead", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "step_overhead", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    out = tmp_path / "performance.md"
    args = ["--smoke", "--no-compiled", "--reps", "2", "--warmup", "0", "--threads", "1", "--out", str(out)]
    assert module.main(args) == 0
    text = out.read_text()
    for heading in ("## Targets, 1 thread(s)", "/ Adam, 1 thread(s)", "/ SGD-momentum", "/ AdamW", "Whole training"):
        assert heading in text
    rows = ("| LAWN all row |", "| OrthoGrad(Adam) final |", "| AdamP all (foreach) |", "| LAWN final tensor |")
    rows += ("| LAWN all row, unfused (fused=False) |", "| traffic limit, all", "| base, a second copy (noise gauge) |")
    for row in rows:
        assert row in text
    assert "--smoke" in text  # the command that produced it


def test_norm_accuracy_script_measures_the_kernel_within_fp32_rounding():
    path = BENCHMARK.with_name("norm_accuracy.py")
    spec = importlib.util.spec_from_file_location("norm_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    errors = module.relative_errors(1 << 20)
    assert abs(errors["fused kernel (after retraction)"]) < 1e-6
    assert set(errors) == {"torch vector_norm", "torch dot", "fused kernel (after retraction)"}


def test_gpu_benchmark_refuses_cleanly_without_cuda(capsys):
    """benchmarks/gpu_fused_step.py needs a CUDA GPU: without one it measures nothing and exits with status 2."""
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run for real")
    spec = importlib.util.spec_from_file_location("gpu_fused_step", BENCHMARK.with_name("gpu_fused_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().out


def test_gpu_benchmark_times_the_path_plan_on_the_cpu_and_restores_the_kernels():
    """``--host-time``'s plan timing needs no GPU: every weight of each set is taken by a fused step (its kernel
    looked up through a stand-in, so nothing is built), and the real kernel table is back afterwards."""
    from lawn.constraint import paths

    spec = importlib.util.spec_from_file_location("gpu_fused_step", BENCHMARK.with_name("gpu_fused_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kernels = dict(paths.KERNELS)
    lines = module.plan_time(calls=2)
    assert kernels == paths.KERNELS
    assert [line.split(",")[1].split("(")[0].strip() for line in lines] == ["ResNet-18", "ResNet-50", "ViT-B"]
    for line in lines:
        weights, taken = re.search(r"\((\d+) weights, (\d+) taken", line).groups()
        assert int(weights) == int(taken) > 0
