"""LAWN's Triton fused step on a GPU: its step time against the base optimizer's alone, and a check that a step
never waits for the GPU (no host synchronisation).

    PYTHONPATH=src python benchmarks/gpu_fused_step.py                  # bf16, ResNet-18 and ViT-B x2 shapes
    PYTHONPATH=src python benchmarks/gpu_fused_step.py --dtype fp32 --markdown

(a) Timing: ``torch.optim.AdamW(fused=True)`` alone, against ``LAWN(AdamW(fused=True))`` on its default path (the
Triton fused step for the constrained CUDA weights) and on its unfused path (``fused=False``: foreach projection,
the base's step, foreach retraction), with every >= 2-D weight constrained per row and per tensor, and with the
final layer's weight only. Each configuration has its own weights and state (fixed random gradients); rounds
run the configurations in a shuffled order, and in a round each runs ``--steps`` steps between two CUDA events;
we report the median over rounds of the time per step and of its ratio to the base's time in the same round.

(b) No host sync: after a warm-up step (Triton compiles its kernels there), one more step of each configuration
runs under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any call that waits for the GPU; AdamW
with ``fused=True`` (``step`` on the GPU, read by the kernels) and torch's default AdamW (``step`` on the CPU,
read on the host as torch does) and SGD with momentum, per row and per tensor.

Needs a CUDA GPU and ``triton``; without them it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import lawn

HERE = Path(__file__).resolve().parent


def _shapes_module():
    """``benchmarks/step_overhead.py``, for its ResNet-18 and ViT parameter shapes (one definition of them)."""
    spec = importlib.util.spec_from_file_location("step_overhead", HERE / "step_overhead.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("step_overhead", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def build(shapes: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, seed: int = 0) -> dict[str, nn.Parameter]:
    """Parameters on the GPU initialised like their layers, each with a fixed random gradient."""
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in shapes:
        if len(shape) >= 2:
            value = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        else:
            value = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        p = nn.Parameter(value.to(device="cuda", dtype=dtype))
        p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device="cuda", dtype=dtype)
        params[name] = p
    return params


def make(
    shapes: list[tuple[str, tuple[int, ...]]],
    final: str,
    dtype: torch.dtype,
    which: str | None,
    granularity: str = "tensor",
    fused: bool | None = None,
    base: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> torch.optim.Optimizer:
    """The base optimizer alone (``which=None``), or LAWN around it with ``which`` ("all" / "final") constrained,
    switched to the constrained phase at once."""
    params = build(shapes, dtype)
    make_base = base or (lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05, fused=True))
    opt = make_base(list(params.values()))
    if which is None:
        return opt
    constrained = [(final, params[final])] if which == "final" else [(n, p) for n, p in params.items() if p.dim() >= 2]
    return lawn.LAWN(opt, constrained, free_steps=0, granularity=granularity, fused=fused)


def uses_triton(opt: torch.optim.Optimizer) -> bool:
    """Whether one step of ``opt`` sends tensors through the Triton kernels (a counting wrapper, then removed)."""
    import lawn.constraint.fused_step as fused_step

    calls: list[str] = []
    original = fused_step.step

    def counted(kernel, *args, **kwargs):
        calls.append(kernel.__name__)
        return original(kernel, *args, **kwargs)

    fused_step.step = counted
    try:
        opt.step()
    finally:
        fused_step.step = original
    return "lawn.constraint.fused_step_triton" in calls


def time_rounds(configs: dict[str, torch.optim.Optimizer], steps: int, reps: int) -> dict[str, list[float]]:
    """Milliseconds per step of each configuration, one value per round (shuffled order each round)."""
    rng = random.Random(0)
    times: dict[str, list[float]] = {name: [] for name in configs}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(reps):
        order = list(configs)
        rng.shuffle(order)
        for name in order:
            opt = configs[name]
            torch.cuda.synchronize()
            start.record()
            for _ in range(steps):
                opt.step()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) / steps)
    return times


def timing(args: argparse.Namespace, dtype: torch.dtype) -> list[str]:
    shapes = _shapes_module()
    sets = [
        ("ResNet-18", shapes.resnet18_shapes(), "fc.weight"),
        (f"ViT-B x{args.vit_blocks}", shapes.vit_shapes(args.vit_blocks), "head.weight"),
    ]
    lines = [
        "| set | constrained | granularity | AdamW(fused) ms | LAWN ms | × base | LAWN fused=False ms | × base |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for set_name, set_shapes, final in sets:
        for which, granularity in (("all", "row"), ("all", "tensor"), ("final", "row"), ("final", "tensor")):
            configs = {
                "base": make(set_shapes, final, dtype, None),
                "fused": make(set_shapes, final, dtype, which, granularity),
                "unfused": make(set_shapes, final, dtype, which, granularity, fused=False),
            }
            if not uses_triton(configs["fused"]):
                raise SystemExit(f"{set_name} {which} {granularity}: the Triton fused step was not used")
            for opt in configs.values():  # warm-up: Triton compiles, the allocator settles
                for _ in range(args.warmup):
                    opt.step()
            times = time_rounds(configs, args.steps, args.reps)
            base = statistics.median(times["base"])
            ratio = {k: statistics.median(t / b for t, b in zip(times[k], times["base"])) for k in times}
            lines.append(
                f"| {set_name} | {which} | {granularity} | {base:.3f} | {statistics.median(times['fused']):.3f} | "
                f"{ratio['fused']:.2f}× | {statistics.median(times['unfused']):.3f} | {ratio['unfused']:.2f}× |"
            )
            print(lines[-1], flush=True)
            del configs
            torch.cuda.empty_cache()
    return lines


def no_host_sync(dtype: torch.dtype) -> list[str]:
    """One step of each configuration under ``set_sync_debug_mode("error")`` (after a warm-up step)."""
    shapes = _shapes_module().vit_shapes(1)
    bases = {
        "AdamW(fused=True)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05, fused=True),
        "AdamW (step on the CPU)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05),
        "SGD(momentum=0.9)": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True),
    }
    lines = []
    for name, base in bases.items():
        for granularity in ("row", "tensor"):
            opt = make(shapes, "head.weight", dtype, "all", granularity, base=base)
            if not uses_triton(opt):  # also the warm-up step
                raise SystemExit(f"{name} {granularity}: the Triton fused step was not used")
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
            lines.append(f"no host synchronisation in a step of LAWN({name}), {granularity}: ok")
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=20, help="steps between two CUDA events (one round)")
    parser.add_argument("--reps", type=int, default=15, help="rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--vit-blocks", type=int, default=2)
    parser.add_argument("--skip-timing", action="store_true", help="only the host-sync check")
    parser.add_argument("--markdown", action="store_true", help="print the results once more as a markdown block")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_fused_step.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")
        return 2
    if importlib.util.find_spec("triton") is None:
        print("gpu_fused_step.py needs triton (pip install 'lawn[triton]'); nothing measured")
        return 2
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, weights {args.dtype}", flush=True)
    lines = no_host_sync(dtype)
    if not args.skip_timing:
        lines += [""] + timing(args, dtype)
    if args.markdown:
        print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
