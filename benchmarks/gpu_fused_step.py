"""LAWN's Triton fused step on a GPU, in one run: step time against ``AdamW(fused=True)``, launches per step, no
host synchronisation, a short training run against the CPU reference, and whether a step can be captured in a
CUDA graph.

    PYTHONPATH=src python benchmarks/gpu_fused_step.py --markdown       # everything (about 5-10 min of GPU)
    PYTHONPATH=src python benchmarks/gpu_fused_step.py --quick          # a smoke run (ResNet-18 only, fewer rounds)

(a) Timing: ``torch.optim.AdamW(fused=True)`` alone, against ``LAWN(AdamW(fused=True), fused=True)`` (the Triton
fused step for the constrained CUDA weights) and ``LAWN(..., fused=False)`` (foreach projection, the base's step,
foreach retraction), on the parameter shapes of ResNet-18, ResNet-50 and ViT-B (12 blocks), fp32 and bf16, with
every >= 2-D weight constrained per row and per tensor, and with the final layer's weight only. Each
configuration has its own weights and state (fixed random gradients); rounds run the three optimizers of a row
in a shuffled order, each ``--steps`` steps between two CUDA events; the table shows the median over rounds of
the time per step and of its ratio to the base's time in the same round, and the Triton kernel launches per step.

(b) No host sync: after a warm-up step (Triton compiles there), a step of each configuration, and one more with
new gradient tensors (so that the launch tables are rebuilt), run under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any call that waits for the GPU: AdamW with
``fused=True`` (``step`` on the GPU, read by the kernels), torch's default AdamW (``step`` on the CPU, read on the
host as torch does) and SGD with nesterov momentum, per row and per tensor, fp32 and bf16.

(c) Training: a small conv net trained for ``TRAIN_STEPS`` steps on fixed random data, LAWN(AdamW(fused=True))
with the Triton step on the GPU, per row and per tensor (fp32, TF32 off, deterministic cuDNN). The check: in
lockstep, the reference path on the GPU and on the CPU fed the very same gradients at every step, the largest
weight difference against a tolerance. Reported beside it: free-running runs against the CPU reference, with their
control (the reference path on the GPU, whose forward and backward passes alone diverge from the CPU's).

(f) With ``--profile``: where one step's time goes (torch.profiler over a few steps of ResNet-18's shapes, fp32:
host time per step against GPU time per step, and the operators by host time).

(d) CUDA graph: one constrained step of LAWN(AdamW(fused=True, capturable=True)) captured and replayed, against
the same steps run eagerly (reported, not required: the goals do not include it).

(e) Host time (also alone, without a GPU: ``--host-time``): the CPU time of the Triton module's ``adam_`` besides
its launches, on CPU tensors of each set's weight shapes: tables built, cached, and with new gradient tensors; and
the CPU time of ``Paths.plan`` (which path each weight takes, asked every step), timed without a profiler.

Needs a CUDA GPU and ``triton``; without them it says so and exits with status 2. Exit status 1 if a check of
(b) or (c) failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import math
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

import lawn

HERE = Path(__file__).resolve().parent
GOALS = {("all", "row"): 1.10, ("all", "tensor"): 1.6, ("final", "row"): 1.03, ("final", "tensor"): 1.03}
TRAIN_STEPS = 30
# Lockstep tolerances: the largest difference below a tenth of one step (lr = 3e-3: Adam turns the rounding of a
# projected gradient near zero into a step of either sign), the mean far below what a wrong term would leave
LOCKSTEP_MAX, LOCKSTEP_MEAN = 3e-4, 1e-6
Shapes = list[tuple[str, tuple[int, ...]]]


def _shapes_module():
    """``benchmarks/step_overhead.py``, for its ResNet-18 and ViT parameter shapes (one definition of them)."""
    spec = importlib.util.spec_from_file_location("step_overhead", HERE / "step_overhead.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("step_overhead", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def resnet50_shapes(classes: int = 1000) -> Shapes:
    """The parameter tensors of a torchvision-style ResNet-50 (25.6M parameters; bottleneck blocks)."""
    shapes: Shapes = [("conv1.weight", (64, 3, 7, 7)), ("bn1.weight", (64,)), ("bn1.bias", (64,))]
    c_in = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            for i, shape in enumerate(((width, c_in, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)), 1):
                shapes += [(f"{prefix}.conv{i}.weight", shape)]
                shapes += [(f"{prefix}.bn{i}.weight", (shape[0],)), (f"{prefix}.bn{i}.bias", (shape[0],))]
            if block == 0:
                shapes += [(f"{prefix}.downsample.0.weight", (4 * width, c_in, 1, 1))]
                shapes += [
                    (f"{prefix}.downsample.1.weight", (4 * width,)),
                    (f"{prefix}.downsample.1.bias", (4 * width,)),
                ]
            c_in = 4 * width
    return shapes + [("fc.weight", (classes, 2048)), ("fc.bias", (classes,))]


def parameter_sets(quick: bool) -> list[tuple[str, Shapes, str]]:
    """(name, shapes, final layer's weight)."""
    overhead = _shapes_module()
    sets = [("ResNet-18", overhead.resnet18_shapes(), "fc.weight")]
    if not quick:
        sets += [("ResNet-50", resnet50_shapes(), "fc.weight"), ("ViT-B", overhead.vit_shapes(12), "head.weight")]
    return sets


def build(shapes: Shapes, dtype: torch.dtype, seed: int = 0) -> dict[str, nn.Parameter]:
    """Parameters on the GPU initialised like their layers, each with a fixed random gradient."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    params = {}
    for name, shape in shapes:
        if len(shape) >= 2:
            value = torch.randn(shape, generator=gen, device="cuda") / math.sqrt(math.prod(shape[1:]))
        else:
            value = torch.ones(shape, device="cuda") if name.endswith("weight") else torch.zeros(shape, device="cuda")
        p = nn.Parameter(value.to(dtype))
        p.grad = (torch.randn(shape, generator=gen, device="cuda") * 1e-3).to(dtype)
        params[name] = p
    return params


def adamw_fused(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05, fused=True)


def make(
    shapes: Shapes,
    final: str,
    dtype: torch.dtype,
    which: str | None,
    granularity: str = "tensor",
    fused: bool = True,
    base: Callable[[list[nn.Parameter]], torch.optim.Optimizer] = adamw_fused,
) -> torch.optim.Optimizer:
    """The base optimizer alone (``which=None``), or LAWN around it with ``which`` ("all" / "final") constrained,
    switched to the constrained phase at once; ``fused=True``: the Triton step for CUDA weights."""
    params = build(shapes, dtype)
    opt = base(list(params.values()))
    if which is None:
        return opt
    constrained = [(final, params[final])] if which == "final" else [(n, p) for n, p in params.items() if p.dim() >= 2]
    return lawn.LAWN(opt, constrained, free_steps=0, granularity=granularity, fused=fused)


@contextlib.contextmanager
def counting(name: str = "_launch") -> Iterator[list[int]]:
    """Count the calls of ``lawn.constraint.fused_step_triton``'s function ``name`` inside the block: ``_launch``
    (every kernel launch goes through it), ``_device_table`` (a table built: a plan's addresses, or a layout)."""
    import lawn.constraint.fused_step_triton as kernels

    counter = [0]
    original = getattr(kernels, name)

    def counted(*args, **options):
        counter[0] += 1
        return original(*args, **options)

    setattr(kernels, name, counted)
    try:
        yield counter
    finally:
        setattr(kernels, name, original)


def launches(opt: torch.optim.Optimizer) -> int:
    """Triton kernel launches in one step of ``opt`` (0: the Triton step was not used)."""
    with counting() as counter:
        opt.step()
    return counter[0]


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


TABLE_HEAD = [
    "| set | dtype | constrained | granularity | launches | AdamW(fused) ms | LAWN fused=True ms | × base | goal "
    "| LAWN fused=False ms | × base |",
    "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|",
]


def timing(args: argparse.Namespace) -> tuple[list[str], bool]:
    """The timing table, and whether every row met its goal."""
    lines, met = list(TABLE_HEAD), True
    for print_line in lines:
        print(print_line, flush=True)
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for set_name, shapes, final in parameter_sets(args.quick):
            for which, granularity in (("all", "row"), ("all", "tensor"), ("final", "row"), ("final", "tensor")):
                configs = {
                    "base": make(shapes, final, dtype, None),
                    "fused": make(shapes, final, dtype, which, granularity),
                    "unfused": make(shapes, final, dtype, which, granularity, fused=False),
                }
                count = launches(configs["fused"])
                if count == 0:  # a row that would measure the wrong thing: said, and counted as not met
                    met = False
                    lines.append(f"| {set_name} | {dtype_name} | {which} | {granularity} | 0: Triton step NOT used |")
                    print(lines[-1], flush=True)
                    continue
                for opt in configs.values():  # warm-up: Triton compiles, the allocator settles
                    for _ in range(args.warmup):
                        opt.step()
                times = time_rounds(configs, args.steps, args.reps)
                base = statistics.median(times["base"])
                ratio = {k: statistics.median(t / b for t, b in zip(times[k], times["base"])) for k in times}
                goal = GOALS[which, granularity]
                ok = ratio["fused"] <= goal
                met &= ok
                lines.append(
                    f"| {set_name} | {dtype_name} | {which} | {granularity} | {count} | {base:.3f} | "
                    f"{statistics.median(times['fused']):.3f} | {ratio['fused']:.2f}× | ≤ {goal:.2f}× "
                    f"{'met' if ok else 'NOT met'} | {statistics.median(times['unfused']):.3f} | "
                    f"{ratio['unfused']:.2f}× |"
                )
                print(lines[-1], flush=True)
                del configs
                torch.cuda.empty_cache()
    return lines, met


SYNC_BASES: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "AdamW(fused=True)": adamw_fused,
    "AdamW (step on the CPU)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05),
    "SGD(momentum=0.9, nesterov)": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True),
}


def no_host_sync(dtypes: list[str]) -> tuple[list[str], bool]:
    """Steps of each configuration under ``set_sync_debug_mode("error")`` (after a warm-up step): one with the
    cached launch tables, one with new gradient tensors (the tables rebuilt)."""
    shapes = _shapes_module().vit_shapes(1)
    lines, ok = [], True
    for dtype_name in dtypes:
        for name, base in SYNC_BASES.items():
            for granularity in ("row", "tensor"):
                opt = make(shapes, "head.weight", DTYPES[dtype_name], "all", granularity, base=base)
                what = f"LAWN({name}), {granularity}, {dtype_name}"
                try:
                    if launches(opt) == 0:  # also the warm-up step
                        raise RuntimeError("the Triton fused step was not used")
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                    try:
                        opt.step()
                        for group in opt.param_groups:
                            for p in group["params"]:
                                p.grad = p.grad.clone()  # new addresses: the launch tables are rebuilt
                        opt.step()
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                    torch.cuda.synchronize()
                    lines.append(f"no host synchronisation in two steps of {what}: ok")
                except Exception as error:  # reported, and the run exits with status 1
                    ok = False
                    lines.append(f"no host synchronisation in two steps of {what}: FAILED ({error!r})")
                print(lines[-1], flush=True)
    return lines, ok


class SmallNet(nn.Module):
    """Conv, channels-last conv, two linear layers: every tensor shape class of the kernels, small."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 8 * 8, 300)
        self.fc2 = nn.Linear(300, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _model_and_data() -> tuple[SmallNet, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = SmallNet()
    model.conv2.weight.data = model.conv2.weight.data.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 3, 16, 16, generator=gen), torch.randint(0, 10, (32,), generator=gen)) for _ in range(4)]
    return model, data


def _lawn(model: nn.Module, granularity: str, fused: bool) -> torch.optim.Optimizer:
    base = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, fused=True)
    weights = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
    return lawn.LAWN(base, weights, free_steps=5, granularity=granularity, fused=fused)


def lockstep(granularity: str) -> dict[str, tuple[float, float]]:
    """``TRAIN_STEPS`` steps of LAWN(AdamW) (5 free steps) with the Triton step on the GPU, and, fed the very same
    gradients at every step, the reference path on the GPU (``fused=False``) and on the CPU: for each reference, the
    largest and the mean absolute weight difference from the Triton run, the worst over the steps."""
    model, data = _model_and_data()
    models = {"triton": copy.deepcopy(model).cuda(), "gpu": copy.deepcopy(model).cuda(), "cpu": copy.deepcopy(model)}
    opts = {name: _lawn(m, granularity, fused=name == "triton") for name, m in models.items()}
    worst = {"gpu": (0.0, 0.0), "cpu": (0.0, 0.0)}
    for step in range(TRAIN_STEPS):
        x, y = data[step % len(data)]
        for opt in opts.values():
            opt.zero_grad()
        torch.nn.functional.cross_entropy(models["triton"](x.cuda()), y.cuda()).backward()
        grads = {n: p.grad for n, p in models["triton"].named_parameters()}
        for name in ("gpu", "cpu"):
            for n, p in models[name].named_parameters():
                p.grad = grads[n].detach().to(p.device, copy=True)
        for opt in opts.values():
            opt.step()
        ours = torch.cat([p.detach().cpu().flatten() for p in models["triton"].parameters()])
        for name in ("gpu", "cpu"):
            diff = (ours - torch.cat([p.detach().cpu().flatten() for p in models[name].parameters()])).abs()
            worst[name] = (max(worst[name][0], float(diff.max())), max(worst[name][1], float(diff.mean())))
    return worst


def free_running(device: str, granularity: str, fused: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """``TRAIN_STEPS`` steps of LAWN(AdamW) on fixed random data, each run computing its own gradients."""
    model, data = _model_and_data()
    model = model.to(device)
    opt = _lawn(model, granularity, fused)
    losses = []
    for step in range(TRAIN_STEPS):
        x, y = data[step % len(data)]
        loss = torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, {n: p.detach().cpu() for n, p in model.named_parameters()}


def training_matches_cpu() -> tuple[list[str], bool]:
    """The Triton step on the GPU against the reference path, per row and per tensor (fp32, TF32 off,
    deterministic cuDNN). The check is the lockstep run: the same gradients at every step, so that only the steps
    can differ. Free-running runs are reported beside it with their control: the reference path on the GPU against
    the CPU, which diverges as much through the forward and backward passes alone (Adam turns the last bits of a
    near-zero gradient into a step of about ``lr``)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    lines, ok = [], True
    for granularity in ("row", "tensor"):
        try:
            with counting() as counter, counting("_device_table") as tables:
                worst = lockstep(granularity)
            count = counter[0]
            good = count > 0 and all(m <= LOCKSTEP_MAX and a <= LOCKSTEP_MEAN for m, a in worst.values())
            ok &= good
            lines.append(
                f"training in lockstep, {granularity}: {TRAIN_STEPS} steps, {count} Triton launches, {tables[0]} "
                f"tables copied to the GPU; the same gradients fed to the reference path, weight difference "
                f"largest / mean: {worst['gpu'][0]:.2e} / {worst['gpu'][1]:.2e} (reference on the GPU), "
                f"{worst['cpu'][0]:.2e} / {worst['cpu'][1]:.2e} (on the CPU): {'ok' if good else 'FAILED'} "
                f"(tolerance {LOCKSTEP_MAX:.0e} / {LOCKSTEP_MEAN:.0e})"
            )
            print(lines[-1], flush=True)
            cpu_losses, cpu = free_running("cpu", granularity, fused=False)
            diffs = {}
            for fused in (True, False):
                losses, gpu = free_running("cuda", granularity, fused=fused)
                diffs[fused] = (
                    max(float((gpu[n] - cpu[n]).abs().max()) for n in cpu),
                    max(abs(a - b) for a, b in zip(losses, cpu_losses)),
                )
            lines.append(
                f"free-running, {granularity} (reported): against the CPU reference, Triton step weights "
                f"{diffs[True][0]:.2e}, losses {diffs[True][1]:.2e}; control, the reference path on the GPU: weights "
                f"{diffs[False][0]:.2e}, losses {diffs[False][1]:.2e}"
            )
        except Exception as error:  # reported, and the run exits with status 1
            ok = False
            lines.append(f"training, {granularity}: FAILED ({error!r})")
        print(lines[-1], flush=True)
    return lines, ok


def graph_capture() -> list[str]:
    """One constrained step captured in a CUDA graph and replayed 3 times, against 3 eager steps (reported): with
    the launch tables built before the capture, and built during it (new gradient tensors, as when a whole
    training step is captured and its gradients come from the graph's memory pool)."""
    lines = []
    shapes = _shapes_module().vit_shapes(1)

    def capturable(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05, fused=True, capturable=True)

    for granularity in ("row", "tensor"):
        for tables in ("built before the capture", "built during the capture"):
            what = f"CUDA graph, {granularity}, launch tables {tables}"
            try:
                eager = make(shapes, "head.weight", torch.float32, "all", granularity, base=capturable)
                graphed = make(shapes, "head.weight", torch.float32, "all", granularity, base=capturable)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up off the default stream, as torch's graph docs ask
                    for opt in (eager, graphed):
                        for _ in range(2):
                            opt.step()
                torch.cuda.current_stream().wait_stream(side)
                if tables == "built during the capture":
                    for p in graphed.param_groups[0]["params"]:
                        p.grad = p.grad.clone()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    graphed.step()
                for _ in range(3):
                    graph.replay()
                for _ in range(3):
                    eager.step()
                torch.cuda.synchronize()
                # eager: 2 + 3 steps; graphed: 2 + 1 captured (not run) + 3 replays
                pairs = zip(eager.param_groups[0]["params"], graphed.param_groups[0]["params"])
                diff = max(float((a.float() - b.float()).abs().max()) for a, b in pairs)
                lines.append(f"{what}: captured; 3 replays against 3 eager steps, max |Δw| = {diff:.2e}")
            except Exception as error:  # reported only
                lines.append(f"{what}: not capturable ({type(error).__name__}: {error})")
                traceback.print_exc()
            print(lines[-1], flush=True)
    return lines


def host_time(calls: int = 200) -> list[str]:
    """CPU time of ``adam_`` besides its launches (replaced by a no-op), on CPU tensors of each model's weight
    shapes: the first call (tables built), a call with everything cached, and one whose gradients are new
    tensors (the gradient table replaced; two sets of gradients, alternating); ``time.process_time``, no GPU
    needed."""
    import time

    import lawn.constraint.fused_step_triton as kernels

    lines = []
    launch = kernels._launch
    kernels._launch = lambda *args, **options: None
    try:
        for set_name, shapes, _ in parameter_sets(quick=False):
            ws = [torch.empty(shape) for _, shape in shapes if len(shape) >= 2]
            m, v = ([torch.empty_like(w) for w in ws] for _ in range(2))
            steps = [torch.zeros(()) for _ in ws]  # on the CPU: the host-step path
            for per_row in (True, False):
                targets = [torch.ones(w.shape[0] if per_row else ()) for w in ws]
                options = dict(
                    lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, decoupled=True, amsgrad=False,
                    maximize=False, project=True, retract=True, per_row=per_row,
                )  # fmt: skip
                grads = [[torch.empty_like(w) for w in ws] for _ in range(2)]  # alternating: they move every call
                started = time.process_time()
                kernels.adam_(ws, grads[0], m, v, [], steps, targets, **options)
                first = time.process_time() - started
                started = time.process_time()
                for _ in range(calls):
                    kernels.adam_(ws, grads[0], m, v, [], steps, targets, **options)
                cached = (time.process_time() - started) / calls
                started = time.process_time()
                for i in range(calls):
                    kernels.adam_(ws, grads[1 - i % 2], m, v, [], steps, targets, **options)
                moved = (time.process_time() - started) / calls
                lines.append(
                    f"host time of adam_, {set_name} ({len(ws)} weights), {'per row' if per_row else 'per tensor'}: "
                    f"first call {first * 1e3:.1f} ms, cached {cached * 1e6:.0f} µs, new gradients "
                    f"{moved * 1e6:.0f} µs"
                )
                print(lines[-1], flush=True)
        started = time.process_time()
        for _ in range(calls):
            torch._foreach_add_(steps, 1.0)
        lines.append(
            f"of which the CPU steps' foreach increment: {(time.process_time() - started) / calls * 1e6:.0f} µs"
        )
        print(lines[-1], flush=True)
    finally:
        kernels._launch = launch
    return lines


def plan_time(calls: int = 2000) -> list[str]:
    """CPU time of ``Paths.plan`` (which path each constrained weight takes, asked every step) for each set with
    every >= 2-D weight constrained per row, on CPU tensors with their gradients and Adam state, without a
    profiler (cProfile's per-call overhead inflates small Python functions several times). The kernel lookup is
    replaced by a stand-in, so no kernel is built; ``time.process_time``, no GPU needed."""
    import types

    from lawn.constraint import paths

    lines = []
    kernels = dict(paths.KERNELS)
    stand_in = types.SimpleNamespace(get=lambda: types.ModuleType("stand_in"))
    paths.KERNELS.update({name: stand_in for name in kernels})  # type: ignore[misc]
    try:
        for set_name, shapes, _ in parameter_sets(quick=False):
            ws = [nn.Parameter(torch.randn(shape)) for _, shape in shapes if len(shape) >= 2]
            named = [(f"w{i}", w) for i, w in enumerate(ws)]
            opt = lawn.LAWN(torch.optim.AdamW(ws, lr=1e-3, fused=True), named, free_steps=0, granularity="row")
            for w in ws:
                w.grad = torch.zeros_like(w)
                state = dict(exp_avg=torch.zeros_like(w), exp_avg_sq=torch.zeros_like(w), step=torch.zeros(()))
                opt.state[w].update(state)
            g = opt._keys.granularity
            groups = list(zip(opt.param_groups, opt._constrained))
            started = time.process_time()
            for _ in range(calls):
                plans = [opt._paths.plan(group, entries, opt.state, group[g]) for group, entries in groups]
            per_step = (time.process_time() - started) / calls
            taken = sum(len(run.entries) for plan in plans for run in plan.fused)
            lines.append(
                f"host time of paths.plan, {set_name} ({len(ws)} weights, {taken} taken by the fused step): "
                f"{per_step * 1e6:.0f} µs per step ({per_step / len(ws) * 1e6:.1f} µs a weight)"
            )
            print(lines[-1], flush=True)
    finally:
        paths.KERNELS.update(kernels)
    return lines


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def where_time_goes(steps: int = 10) -> list[str]:
    """Host and GPU time per step of LAWN(AdamW(fused=True)) on ResNet-18's shapes (fp32), and the operators that
    take the host's time, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    lines = []
    shapes, final = parameter_sets(quick=True)[0][1:]
    for which, granularity, fused in (
        ("all", "row", True),
        ("all", "tensor", True),
        ("final", "tensor", True),
        ("all", "row", False),
        (None, "tensor", True),
    ):
        opt = make(shapes, final, torch.float32, which, granularity, fused=fused)
        for _ in range(3):
            opt.step()
        torch.cuda.synchronize()
        host = []
        for _ in range(steps):
            torch.cuda.synchronize()
            begin = time.perf_counter()
            opt.step()
            host.append(time.perf_counter() - begin)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                opt.step()
            torch.cuda.synchronize()
        events = prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events) / steps
        name = "AdamW(fused) alone" if which is None else f"LAWN {which} {granularity} fused={fused}"
        lines.append(
            f"where the time goes, {name}: host {statistics.median(host) * 1e6:.0f} µs per step (median, "
            f"GPU idle at the start), GPU kernels {gpu_us:.0f} µs per step"
        )
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
        print(*lines[-2:], sep="\n", flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20, help="steps between two CUDA events (one round)")
    parser.add_argument("--reps", type=int, default=15, help="rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="ResNet-18 only, 5 rounds: a smoke run")
    parser.add_argument("--skip-timing", action="store_true", help="only the checks (b), (c), (d)")
    parser.add_argument("--markdown", action="store_true", help="print the results once more as a markdown block")
    parser.add_argument("--host-time", action="store_true", help="only the host time of the step (no GPU needed)")
    parser.add_argument("--profile", action="store_true", help="also (f): where the step's time goes")
    args = parser.parse_args(argv)
    if args.host_time:
        host_time()
        plan_time()
        return 0
    if not torch.cuda.is_available():
        print("gpu_fused_step.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")
        return 2
    if importlib.util.find_spec("triton") is None:
        print("gpu_fused_step.py needs triton (pip install 'lawn[triton]'); nothing measured")
        return 2
    if args.quick:
        args.reps = min(args.reps, 5)
    import triton

    head = (
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
        f"CUDA {torch.version.cuda}"
    )
    print(head, flush=True)
    sync_lines, sync_ok = no_host_sync(args.dtypes)
    train_lines, train_ok = training_matches_cpu()
    graph_lines = graph_capture()
    lines = [head, "", *sync_lines, *train_lines, *graph_lines]
    if not args.skip_timing:
        table, met = timing(args)
        lines += ["", *table, "", f"all timing goals met: {'yes' if met else 'no'}", "", *host_time(), *plan_time()]
    if args.profile:
        lines += ["", *where_time_goes()]
    if args.markdown:
        print("\n" + "\n".join(lines))
    return 0 if sync_ok and train_ok else 1


if __name__ == "__main__":
    sys.exit(main())
