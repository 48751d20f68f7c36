"""What LAWN adds to an optimizer step, side by side with the base optimizer alone and with peers.

    PYTHONPATH=src python benchmarks/step_overhead.py --note "..."       # writes docs/performance.md

Everything runs in one process with ``torch.set_num_threads(--threads)``. Within a family (one parameter set,
one base optimizer) every configuration has its own weights and optimizer state; all share the fixed
gradients. The configurations run in a shuffled order each round (interleaved repetitions), and in a round
each runs a few steps back to back and keeps the fastest (a step that lost the CPU to another process
measures the machine, not the code). Per configuration we report the median over rounds of that step time
and the *overhead*: the median over rounds of ``step / base step of the same round − 1`` (pairing within a
round cancels load that drifts on a shared machine). Peak memory added is measured with PyTorch's own
allocator records (``torch.profiler`` with ``profile_memory=True``): the peak, over one step, of the bytes
allocated since the step began, minus the same for the base optimizer's step.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lawn

Shapes = list[tuple[str, tuple[int, ...]]]

# Overhead targets against the fastest variant of each base (torch's fused=True step): every >= 2-D weight per row /
# per tensor, the final layer only, and the whole training step with the final layer.
TARGETS = {"row": 0.15, "tensor": 0.30, "final": 0.03, "train": 0.01}


# ----------------------------------------------------------------------------- parameter sets
def resnet18_shapes(classes: int = 1000) -> Shapes:
    """The 62 parameter tensors of a torchvision-style ResNet-18 (11.7M parameters)."""
    shapes: Shapes = [("conv1.weight", (64, 3, 7, 7)), ("bn1.weight", (64,)), ("bn1.bias", (64,))]
    c_in = 64
    for stage, c_out in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            first = c_in if block == 0 else c_out
            prefix = f"layer{stage}.{block}"
            shapes += [(f"{prefix}.conv1.weight", (c_out, first, 3, 3))]
            shapes += [(f"{prefix}.bn1.weight", (c_out,)), (f"{prefix}.bn1.bias", (c_out,))]
            shapes += [(f"{prefix}.conv2.weight", (c_out, c_out, 3, 3))]
            shapes += [(f"{prefix}.bn2.weight", (c_out,)), (f"{prefix}.bn2.bias", (c_out,))]
            if block == 0 and first != c_out:
                shapes += [(f"{prefix}.downsample.0.weight", (c_out, first, 1, 1))]
                shapes += [(f"{prefix}.downsample.1.weight", (c_out,)), (f"{prefix}.downsample.1.bias", (c_out,))]
        c_in = c_out
    return shapes + [("fc.weight", (classes, 512)), ("fc.bias", (classes,))]


def vit_shapes(blocks: int, width: int = 768, classes: int = 1000) -> Shapes:
    """``blocks`` transformer blocks of ViT-B / GPT-2-small width (7.1M parameters each) and a classifier head."""
    shapes: Shapes = []
    for i in range(blocks):
        b = f"blocks.{i}"
        shapes += [(f"{b}.norm1.weight", (width,)), (f"{b}.norm1.bias", (width,))]
        shapes += [(f"{b}.attn.qkv.weight", (3 * width, width)), (f"{b}.attn.qkv.bias", (3 * width,))]
        shapes += [(f"{b}.attn.proj.weight", (width, width)), (f"{b}.attn.proj.bias", (width,))]
        shapes += [(f"{b}.norm2.weight", (width,)), (f"{b}.norm2.bias", (width,))]
        shapes += [(f"{b}.mlp.fc1.weight", (4 * width, width)), (f"{b}.mlp.fc1.bias", (4 * width,))]
        shapes += [(f"{b}.mlp.fc2.weight", (width, 4 * width)), (f"{b}.mlp.fc2.bias", (width,))]
    return shapes + [("head.weight", (classes, width)), ("head.bias", (classes,))]


@dataclass
class ParamSet:
    name: str
    shapes: Shapes
    final: str  # the final layer's weight

    def build(self, seed: int = 0) -> dict[str, nn.Parameter]:
        """Parameters initialised like their layers, each with a fixed random gradient."""
        gen = torch.Generator().manual_seed(seed)
        params = {}
        for name, shape in self.shapes:
            if len(shape) >= 2:
                value = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
            else:
                value = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
            p = nn.Parameter(value)
            p.grad = torch.randn(shape, generator=gen) * 1e-3
            params[name] = p
        return params

    def constrained(self, params: dict[str, nn.Parameter], which: str) -> list[tuple[str, nn.Parameter]]:
        if which == "final":
            return [(self.final, params[self.final])]
        return [(name, p) for name, p in params.items() if p.dim() >= 2]

    def describe(self) -> str:
        n = sum(math.prod(s) for _, s in self.shapes)
        weights = sum(math.prod(s) for _, s in self.shapes if len(s) >= 2)
        final = math.prod(dict(self.shapes)[self.final])
        return (
            f"{self.name}: {n / 1e6:.1f}M parameters in {len(self.shapes)} tensors; the >= 2-D weights hold "
            f"{weights / n:.1%} of them, the final layer's weight `{self.final}` {final / n:.1%}"
        )


# ----------------------------------------------------------------------------- configurations
# The fastest variant of each base on CPU (torch's fused=True step): every overhead is measured against it.
BASES: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "Adam": lambda ps: torch.optim.Adam(ps, lr=1e-4, fused=True),
    "SGD-momentum": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, fused=True),
}
# The same bases on their multi-tensor (foreach) path, shown for reference.
FOREACH_BASES: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "Adam": lambda ps: torch.optim.Adam(ps, lr=1e-4, foreach=True),
    "SGD-momentum": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, foreach=True),
}


@dataclass
class Config:
    label: str
    optimizer: torch.optim.Optimizer | None
    constrained: str = "-"  # "final" / "all" / "-"
    granularity: str = "-"
    kind: str = "base"  # base / base-foreach / noise / lawn / lawn-unfused / lawn-reference / lawn-compiled / limit /
    # peer
    first_step_s: float = 0.0
    times: list[float] = field(default_factory=list)  # wall clock, per round
    ratios: list[float] = field(default_factory=list)  # to the base, per round
    cpu_ratios: list[float] = field(default_factory=list)  # the same in CPU time of the process
    peak_bytes: int = 0
    state_bytes: int = 0


def _orthograd(base: torch.optim.Optimizer, params: list[nn.Parameter], foreach: bool | None):
    """pytorch_optimizer's OrthoGrad around ``base``, its projection applied to ``params`` only."""
    from pytorch_optimizer import OrthoGrad

    class OrthoGradOn(OrthoGrad):
        def step(self, closure=None):  # OrthoGrad.step, restricted to the constrained set
            self.apply_orthogonal_gradients(params)
            return self.optimizer.step()

    return OrthoGradOn(base, foreach=foreach)


class TrafficLimit:
    """The base step plus the memory traffic a per-tensor constrained step cannot avoid on ``params``.

    Fused into the base step, a per-row step moves exactly the base step's memory (each row's sums are taken while
    it is in cache): its limit is the base step itself. Per tensor, the projection's coefficient needs the whole
    tensor's ``⟨g, w⟩`` before the update and the retraction the whole ``‖w‖`` after it: one more read of ``g`` and
    ``w``, and one more read and write of ``w``, for a tensor larger than the cache. Here those passes are
    ``g ← g + 0·w`` (one write more than a pure read) and ``w ← 1·w``, PyTorch's own multi-tensor kernels.
    """

    def __init__(self, base: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
        self.base, self.params = base, params

    def step(self) -> None:
        self.base.step()
        with torch.no_grad():
            weights = [p.detach() for p in self.params]
            torch._foreach_add_([p.grad for p in self.params], weights, alpha=0.0)
            torch._foreach_mul_(weights, 1.0)


def own_copy(params: dict[str, nn.Parameter]) -> dict[str, nn.Parameter]:
    """Fresh copies of the parameters that share the originals' gradient tensors.

    Every configuration needs weights of its own, so that one optimizer's steps do not change the weights (and
    the norms) another one sees. Sharing the (fixed) gradients costs nothing in realism and saves memory.
    """
    copies = {}
    for name, p in params.items():
        copies[name] = nn.Parameter(p.detach().clone())
        copies[name].grad = p.grad
    return copies


def configs(
    pset: ParamSet, params: dict[str, nn.Parameter], base: str, extras: bool, compiled: bool, unfused: bool
) -> list[Config]:
    """The base optimizer (fused), LAWN (default options) on both constrained sets at both granularities, and
    (``extras``) the base's foreach variant, the traffic limit, LAWN's unfused, reference and compiled paths and
    the peers; each on its own copy of ``params``."""

    def fresh() -> tuple[dict[str, nn.Parameter], list[nn.Parameter]]:
        mine = own_copy(params)
        return mine, list(mine.values())

    mine, every = fresh()
    out = [Config("base", BASES[base](every))]
    mine, every = fresh()  # the same work on other memory: its "overhead" is the noise of the measurement
    out.append(Config("base, a second copy (noise gauge)", BASES[base](every), kind="noise"))
    for which in ("final", "all"):
        for granularity in ("tensor", "row"):
            mine, every = fresh()
            opt = lawn.LAWN(BASES[base](every), pset.constrained(mine, which), free_steps=0, granularity=granularity)
            out.append(Config(f"LAWN {which} {granularity}", opt, which, granularity, "lawn"))
    if not extras:
        return out
    mine, every = fresh()
    out.append(Config("base, foreach (for reference)", FOREACH_BASES[base](every), kind="base-foreach"))
    mine, every = fresh()
    limit = TrafficLimit(BASES[base](every), [p for _, p in pset.constrained(mine, "all")])
    out.append(Config("traffic limit, all, per tensor (see below)", limit, "all", "tensor", "limit"))
    for granularity in ("tensor", "row") if unfused else ():
        mine, every = fresh()
        opt = lawn.LAWN(
            BASES[base](every), pset.constrained(mine, "all"), free_steps=0, granularity=granularity, fused=False
        )
        out.append(Config(f"LAWN all {granularity}, unfused (fused=False)", opt, "all", granularity, "lawn-unfused"))
    if base != "Adam":  # the reference path and the peers: once, with Adam
        return out
    mine, every = fresh()
    ref = lawn.LAWN(BASES[base](every), pset.constrained(mine, "all"), free_steps=0, foreach=False)
    out.append(Config("LAWN all tensor, reference (per-tensor loop)", ref, "all", "tensor", "lawn-reference"))
    for granularity in ("tensor", "row") if compiled else ():
        mine, every = fresh()
        opt = lawn.LAWN(
            BASES[base](every), pset.constrained(mine, "all"), free_steps=0, granularity=granularity, compiled=True
        )
        out.append(Config(f"LAWN all {granularity}, compiled", opt, "all", granularity, "lawn-compiled"))
    for which in ("final", "all"):
        for foreach in (None, True):
            mine, every = fresh()
            opt = _orthograd(BASES[base](every), [p for _, p in pset.constrained(mine, which)], foreach)
            label = f"OrthoGrad({base}) {which}" + (", foreach" if foreach else "")
            out.append(Config(label, opt, which, "tensor", "peer"))
    from pytorch_optimizer import AdamP

    mine, every = fresh()
    adamp = AdamP(every, lr=1e-4, foreach=True)  # projects every >= 2-D weight: the "all" set
    out.append(Config("AdamP all (foreach)", adamp, "all", "tensor", "peer"))
    return out


# ----------------------------------------------------------------------------- measurement
def timed(work: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads of this process) of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def warm_up(cfgs: list[Config], steps: int) -> None:
    for cfg in cfgs:
        cfg.first_step_s = timed(cfg.optimizer.step)[0]  # includes compilation for the compiled path
        for _ in range(steps):
            cfg.optimizer.step()


def best_of(k: int, work: Callable[[], Any]) -> tuple[float, float]:
    """The fastest of ``k`` back-to-back runs, in wall and in CPU time: a run that lost the CPU to another
    process measures the machine, not the code."""
    runs = [timed(work) for _ in range(k)]
    return min(wall for wall, _ in runs), min(cpu for _, cpu in runs)


def record_round(cfgs: list[Config], measured: dict[str, tuple[float, float]]) -> None:
    base_wall, base_cpu = measured["base"]
    for cfg in cfgs:
        wall, cpu = measured[cfg.label]
        cfg.times.append(wall)
        cfg.ratios.append(wall / base_wall)
        cfg.cpu_ratios.append(cpu / base_cpu if base_cpu > 0 else float("nan"))


def interleave(cfgs: list[Config], reps: int, per_round: int, rng: random.Random) -> None:
    """``reps`` rounds; each runs every configuration (``per_round`` steps, the fastest kept), shuffled."""
    for _ in range(reps):
        order = list(cfgs)
        rng.shuffle(order)
        record_round(cfgs, {cfg.label: best_of(per_round, cfg.optimizer.step) for cfg in order})


def peak_step_bytes(opt: torch.optim.Optimizer) -> int:
    """Peak, over one ``opt.step()``, of the CPU bytes allocated since the step began (allocator records)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    records = prof.profiler.kineto_results.events()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in records if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def lawn_state_bytes(opt: torch.optim.Optimizer) -> int:
    if not isinstance(opt, lawn.NormConstraint):
        return 0
    return sum(t.numel() * t.element_size() for t in opt.target_norms.values())


def measure_memory(cfgs: list[Config]) -> None:
    for cfg in cfgs:
        cfg.peak_bytes = peak_step_bytes(cfg.optimizer)
        cfg.state_bytes = lawn_state_bytes(cfg.optimizer)


def dynamo_graphs() -> int:
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


# ----------------------------------------------------------------------------- whole training step
class SmallResNet(nn.Module):
    """A CIFAR-style BN ResNet-8: stem, three basic blocks (16, 32, 64 channels), pooling, linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.ModuleList([_Block(16, 16, 1), _Block(16, 32, 2), _Block(32, 64, 2)])
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


def training_step_overhead(reps: int, per_round: int, batch: int, rng: random.Random) -> list[Config]:
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    models, cfgs = [], []
    variants = (
        ("base", "-", "base", {}),
        ("base, a second copy (noise gauge)", "-", "noise", {}),
        ("LAWN final tensor", "final", "lawn", {}),
        ("LAWN all tensor", "all", "lawn", {}),
        ("LAWN all row", "all", "lawn", {"granularity": "row"}),
        ("LAWN all tensor, unfused (fused=False)", "all", "lawn-unfused", {"fused": False}),
    )
    for label, which, kind, options in variants:
        torch.manual_seed(0)
        model = SmallResNet()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        if which == "final":
            opt = lawn.LAWN(opt, [("fc.weight", model.fc.weight)], free_steps=0, **options)
        elif which == "all":
            weights = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
            opt = lawn.LAWN(opt, weights, free_steps=0, **options)
        models.append(model)
        cfgs.append(Config(label, opt, which, options.get("granularity", "tensor") if which != "-" else "-", kind))

    def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for model, cfg in zip(models, cfgs):
        for _ in range(3):
            train_step(model, cfg.optimizer)
    pairs = list(zip(models, cfgs))
    for _ in range(reps):
        rng.shuffle(pairs)
        measured = {
            cfg.label: best_of(per_round, lambda model=model, cfg=cfg: train_step(model, cfg.optimizer))
            for model, cfg in pairs
        }
        record_round(cfgs, measured)
    return cfgs


# ----------------------------------------------------------------------------- report
def overhead(cfg: Config, cpu: bool = False) -> float:
    return statistics.median(cfg.cpu_ratios if cpu else cfg.ratios) - 1.0


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:+.2f}"


@dataclass
class Result:
    family: str
    threads: int
    cfgs: list[Config]


def family_table(cfgs: list[Config]) -> list[str]:
    base = cfgs[0]
    lines = [
        "| configuration | constrained | median step (ms) | × base | (in CPU time) "
        "| peak memory added (MiB) | LAWN state (B) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for cfg in cfgs:
        lines.append(
            f"| {cfg.label} | {cfg.constrained} | {ms(statistics.median(cfg.times))} | "
            f"{'—' if cfg is base else ratio(cfg)} | "
            f"{'—' if cfg is base else ratio(cfg, cpu=True)} | "
            f"{'—' if cfg is base else mib(cfg.peak_bytes - base.peak_bytes)} | {cfg.state_bytes} |"
        )
    return lines


def ratio(cfg: Config, cpu: bool = False) -> str:
    return f"{1.0 + overhead(cfg, cpu):.3f}×"


def check_targets(results: list[Result], train: list[Config]) -> list[str]:
    lines = ["| target (× the base's fused step) | measured (wall clock) | met | in CPU time |", "|---|---|---|---|"]

    def row(text: str, value: str, ok: bool, cpu: str = "") -> None:
        lines.append(f"| {text} | {value} | {'yes' if ok else '**no**'} | {cpu} |")

    def reference_row(text: str, value: str, cpu: str) -> None:  # a number to read the targets against
        lines.append(f"| {text}, for reference | {value} | — | {cpu} |")

    for result in results:
        if result.family.endswith("/ AdamW"):
            continue
        by_label = {cfg.label: cfg for cfg in result.cfgs}
        name = result.family
        for which in ("all", "final"):
            for granularity in ("row", "tensor"):
                cfg = by_label[f"LAWN {which} {granularity}"]
                limit = TARGETS["final"] if which == "final" else TARGETS[granularity]
                text = f"{name}: {which}, {granularity}: ≤ {1 + limit:.2f}×"
                row(text, ratio(cfg), overhead(cfg) <= limit, ratio(cfg, cpu=True))
        for which in ("final", "all"):
            mine = by_label[f"LAWN {which} tensor"]
            for label, peer in by_label.items():
                if label.startswith("OrthoGrad") and peer.constrained == which:
                    r = statistics.median(a / b for a, b in zip(mine.times, peer.times))
                    row(f"{name}: LAWN {which} tensor faster than {label}", f"LAWN / peer = {r:.3f}", r < 1)
    for result in results:
        for cfg in result.cfgs:
            what = {
                "limit": "the traffic limit per tensor, all weights (per row: the base step itself, 1.000×)",
                "noise": "noise gauge (no extra work)",
                "base-foreach": "the base on its foreach path",
                "lawn-unfused": f"{cfg.label.removeprefix('LAWN ')}",
            }.get(cfg.kind)
            if what is not None and not result.family.endswith("/ AdamW"):
                reference_row(f"{result.family}: {what}", ratio(cfg), ratio(cfg, cpu=True))
    for cfg in train:
        if cfg.label == "LAWN final tensor":
            text = f"whole training step, final layer: ≤ {1 + TARGETS['train']:.2f}×"
            row(text, ratio(cfg), overhead(cfg) <= TARGETS["train"], ratio(cfg, cpu=True))
        elif cfg.kind != "base":
            reference_row(f"whole training step, {cfg.label}", ratio(cfg), ratio(cfg, cpu=True))
    return lines


def training_table(train: list[Config], batch: int) -> list[str]:
    base = train[0]
    size = sum(p.numel() for group in base.optimizer.param_groups for p in group["params"])
    lines = [
        f"BN ResNet-8 (CIFAR-style, {size} parameters), batch {batch} of 3×32×32, Adam(fused=True); *final* is",
        "`fc.weight`, *all* every conv and linear weight.",
        "",
        "| configuration | median step (ms) | × base | (in CPU time) |",
        "|---|---:|---:|---:|",
    ]
    for cfg in train:
        slow = "—" if cfg is base else ratio(cfg)
        slow_cpu = "—" if cfg is base else ratio(cfg, cpu=True)
        lines.append(f"| {cfg.label} | {ms(statistics.median(cfg.times))} | {slow} | {slow_cpu} |")
    return lines


def hardware() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__} "
        f"(CPU capability {torch.backends.cpu.get_cpu_capability()}), Python {platform.python_version()}"
    )


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS after every step.

    Otherwise whether the base optimizers' temporaries (Adam's ``sqrt`` of the second moments: the size of all
    parameters) page-fault anew at every step depends on what else the process holds, and the base step's time
    changes by up to 2x between otherwise identical runs. A training loop's allocator is warm like this.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 25)) and bool(libc.mallopt(-1, 2**31 - 1))  # MMAP_ / TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


@dataclass
class Run:
    threads: int
    results: list[Result]
    train: list[Config]
    recompiles: int


def report(args: argparse.Namespace, sets: list[ParamSet], runs: list[Run], started: str, elapsed: float) -> str:
    command = "PYTHONPATH=src python benchmarks/step_overhead.py " + shlex.join(args.argv)
    out = [
        "# Performance: what LAWN adds to an optimizer step",
        "",
        "Generated by `benchmarks/step_overhead.py`: every number below comes from one run of it (do not edit).",
        "",
        f"- command: `{command.strip()}`",
        f"- hardware: {hardware()}; CPU only (no GPU was available, none measured)",
        f"- threads: {', '.join(f'`torch.set_num_threads({r.threads})`' for r in runs)}; glibc told to keep freed "
        f"memory: {'yes' if args.malloc_kept else 'no (not glibc)'}",
        f"- load average (1, 5, 15 min) at start: {started}; at end: {load_average()}; run time {elapsed:.0f} s",
        f"- repetitions: {args.reps} interleaved rounds per family after {args.warmup} warm-up steps; in each round",
        f"  every configuration runs {args.per_round} steps back to back and the fastest is kept",
    ]
    if args.note:
        out.append(f"- note: {args.note}")
    out += [
        "",
        "Parameter sets: " + "; ".join(s.describe() for s in sets) + ".",
        "Constrained sets: *final* = the final layer's weight only (the LAWN default: what discovery returns for",
        "these networks); *all* = every >= 2-D weight. *Base* = the fastest variant of the base optimizer on CPU,",
        "torch's `fused=True` step; LAWN runs with its default options (`fused=None`: the fused constrained step).",
        "*Median step* = median over rounds of each round's fastest step; *× base* = median over rounds of (step",
        "time / base step time in the same round), in wall-clock time and (next column) in CPU time of the process",
        "(`time.process_time()`, all threads).",
        "*Base, a second copy* repeats the base optimizer on its own copy of the weights: its overhead is what the",
        "measurement reports for no extra work at all, i.e. its noise (the same step on other memory).",
        "*Peak memory added* = peak bytes allocated during one step minus the base step's (PyTorch's allocator",
        "records via `torch.profiler(profile_memory=True)`); *LAWN state* = bytes of the",
        "stored fp32 target norms. Peers: `pytorch_optimizer.OrthoGrad` around the same base with its projection",
        "applied to the same constrained set (its default, per-tensor loop on CPU, and `foreach=True`), and",
        "`pytorch_optimizer.AdamP(foreach=True)`, which projects every >= 2-D weight (the *all* set).",
        "",
    ]
    for run in runs:
        out += [f"## Targets, {run.threads} thread(s)", "", *check_targets(run.results, run.train), ""]
    for run in runs:
        for result in run.results:
            out += [f"## {result.family}, {run.threads} thread(s)", "", *family_table(result.cfgs), ""]
            compiled = [c for c in result.cfgs if c.kind == "lawn-compiled"]
            if compiled:
                out.append(
                    "First step of the compiled path (compiles, unless inductor's on-disk cache already has the "
                    "graphs): " + "; ".join(f"{c.label}: {c.first_step_s:.1f} s" for c in compiled) + "."
                )
                out.append("")
        out += [f"Graphs compiled by dynamo during the timed rounds (recompilations): {run.recompiles}.", ""]
        out += [f"## Whole training step (forward + backward + step), {run.threads} thread(s)", ""]
        out += [*training_table(run.train, args.batch), ""]
    full = vit_shapes(12)
    head_share = math.prod(dict(full)["head.weight"]) / sum(math.prod(shape) for _, shape in full)
    out += [
        "## Reading the tables",
        "",
        "- The final-layer overhead scales with the final layer's share of the parameters (see the parameter",
        f"  sets above); in a full 12-block ViT-B the head holds {head_share:.1%} of them. The ViT stack here has",
        "  fewer blocks because every configuration keeps its own copy of the weights and state.",
        *NOTES,
    ]
    return "\n".join(out) + "\n"


NOTES = [
    "- The targets are stated for two threads. On a machine whose cores are also busy with other work (a load",
    "  average above the core count, see the header), each parallel region of a kernel can wait a scheduler time",
    "  slice for its second thread, and two-thread step times then swing far more than the differences being",
    "  measured, in both directions. One thread does not wait for a partner: its tables are the stable comparison",
    "  of the same code. CPU time leaves out the time the process waited for a core, so at one thread it is the",
    "  steadiest measure on a busy machine; at two threads it counts a thread spinning while it waits for its",
    "  partner.",
    "- *× base* compares with the base optimizer's own fused step, the fastest torch has on CPU; its foreach",
    "  step (a row in the tables) is several times slower. A step of SGD-momentum makes far fewer passes than an",
    "  Adam step, so the same constraint work is a larger fraction of it.",
    "",
    "## How the fast path saves work",
    "",
    "- **The fused constrained step (the default, `fused=None`).** For `torch.optim.Adam`, `AdamW` and `SGD`",
    "  bases LAWN runs the constrained CPU weights' whole step in one C++ kernel",
    "  (`constraint/csrc/fused_step.cpp`): projection, the base's update (torch's math, fp32, on the base's own",
    "  state, so checkpoints interchange with the unfused path and a plain optimizer) and retraction. Per row a",
    "  row is read from memory once: its dot is summed as it streams into the cache, the update follows while it",
    "  is there (summing the new norm as values are stored), then the rescale; the memory traffic is the base",
    "  step's own. Per tensor the dot over the whole tensor is needed before the update and the new norm after",
    "  it: three passes (each thread keeps the same range in all three, so what it touched last is in its cache).",
    "  Every other tensor takes the base's own step. Both C++ kernels are one extension (`csrc/kernels.cpp`), built",
    "  once at first use (one g++ run: 60–67 s of CPU here, against 115–118 s for the two separate builds",
    "  before, each the compile command of torch's build.ninja under `/usr/bin/time -f %U`, two rounds on a",
    "  loaded 2-core machine), then cached.",
    "  The bullets below describe the unfused paths (`fused=False`, other bases, other devices and dtypes).",
    "- **Tensor by tensor on CPU.** PyTorch's `_foreach_*` kernels are loops over the tensors on CPU, so the fast",
    "  path does each tensor's passes back to back (`⟨g, w⟩` then the update; `‖w‖` then the rescale): the second",
    "  pass can find the tensor still in cache. On other devices the small per-tensor arithmetic is batched with",
    "  `_foreach_*` kernels.",
    "- **‖w‖ computed at every projection.** An earlier version reused the target as ‖w‖ right after a",
    "  retraction (one pass fewer). Writes through `.data` (`vector_to_parameters`, EMA/SWA swaps) bypass version",
    "  counters, so that shortcut could use a stale norm; it was removed (issue 12, item 15). The fused step",
    "  (`fused_step.py`) computes ‖w‖ in the same pass as the update, so it pays nothing for this.",
    "- **No temporaries the size of a weight.** Per-tensor fp32 dot products are one BLAS `dot`; per-row (and",
    "  low-precision) dot products sum fp32 products over blocks of rows of at most 2^18 elements (`vecdot`",
    "  makes a full-size product, and `einsum`'s batched matrix-vector products measured twice as slow).",
    "- **No host synchronisation.** Coefficients and scales stay 0-d / `(rows,)` tensors; nothing calls `.item()`",
    "  (`tests/test_lawn_fast_paths.py` checks that a constrained step dispatches no host read).",
    "- **Python work once per step.** One pass collects the constrained tensors that have a gradient (and refuses",
    "  sparse ones); projection and retraction reuse that list.",
    "- **Optional compiled path (`compiled=True`).** The reference math compiled with `torch.compile` (inductor):",
    "  the projection and the retraction are two graphs per parameter group, in which each tensor's (or row's)",
    "  reductions and update are fused. It compiles at the first constrained step, once per list of shapes (no",
    "  recompilation per step, see above), and falls back to the foreach path with a warning if compiling fails.",
    "  On CPU inductor's reductions (cascade sums) cost more than they save except per row.",
    "- **Optional fused kernel (`fused=True`).** A hand-written C++ kernel (`constraint/csrc/fused_constraint.cpp`)",
    "  for fp32 CPU weights (contiguous or channels-last). Per row it makes one pass: a row's sums are taken as it",
    "  streams through the cache and its update follows while it is still there, so the projection reads `g` and",
    "  `w` once and writes `g` once, and the retraction reads and writes `w` once: the traffic limit below. Per",
    "  tensor it makes the two passes the math needs, with reductions that run at memory bandwidth (torch's fp32",
    "  `vector_norm` on CPU is slower than a read-write pass over the same data). Its sums are fp32 over",
    "  4096-element blocks and fp64 across blocks, so they are also accurate: torch's fp32 CPU norm is off by ~1e-5",
    "  (relative) at 1M elements and ~3e-4 at 10M (`benchmarks/norm_accuracy.py`). It is built at first use, in",
    "  the same extension as the fused step (then cached by torch).",
    "",
    "## The traffic limit",
    "",
    "Fused into the base step, the constrained step per row moves exactly the base step's memory (read `w`, `g`",
    "and the state, write `w` and the state), with every sum taken while a row is in cache: per row its traffic",
    "limit is the base step itself (1.000×), and what it costs beyond that is arithmetic (a dot, a norm and a",
    "rescale per row, in the same loop as the update of a neighbouring row) and per-step Python work. Per tensor the",
    "projection's coefficient needs the whole tensor's `⟨g, w⟩` before the update and the retraction the whole",
    "`‖w‖` after it, so a tensor larger than the cache is read once more (`g`, `w`) and read and written once",
    "more (`w`). The *traffic limit, per tensor* row measures the base step plus those two passes (`g ← g + 0·w`,",
    "one write more than needed, and `w ← 1·w`, PyTorch's multi-tensor kernels): the least a per-tensor",
    "constrained step can cost on this machine unless the dot comes from elsewhere (e.g. the backward pass).",
]


# ----------------------------------------------------------------------------- main
def smoke_sets() -> list[ParamSet]:
    shapes = [("c.weight", (8, 4, 3, 3)), ("n.weight", (8,)), ("fc.weight", (5, 8)), ("fc.bias", (5,))]
    return [ParamSet("tiny-convnet", shapes, "fc.weight")]


def run_families(
    sets: list[ParamSet], args: argparse.Namespace, rng: random.Random, clock: float, memory: bool
) -> tuple[list[Result], int]:
    results, recompiles = [], 0
    threads = torch.get_num_threads()
    for pset in sets:
        for base in BASES:
            params = pset.build()
            cfgs = configs(
                pset, params, base, extras=base != "AdamW", compiled=not args.no_compiled, unfused=not args.no_unfused
            )
            family = f"{pset.name} / {base}"
            print(f"[{time.perf_counter() - clock:5.0f} s] {family}, {threads} thread(s)", flush=True)
            warm_up(cfgs, args.warmup)
            graphs = dynamo_graphs()
            interleave(cfgs, args.reps, args.per_round, rng)
            recompiles += dynamo_graphs() - graphs
            if memory:
                measure_memory(cfgs)
            results.append(Result(family, threads, cfgs))
            for cfg in cfgs:
                extra = "" if cfg.label == "base" else f"  overhead {overhead(cfg):+.3f}"
                print(f"    {cfg.label:48s} {ms(statistics.median(cfg.times)):>9s} ms{extra}", flush=True)
                cfg.optimizer = None  # free the family's parameters and states before the next one
            del params
    return results, recompiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts, each a full run")
    parser.add_argument("--reps", type=int, default=12, help="interleaved rounds per family")
    parser.add_argument("--per-round", type=int, default=3, help="steps per configuration and round (fastest kept)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--vit-blocks", type=int, default=2, help="transformer blocks in the ViT-B-like set")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the whole-training-step benchmark")
    parser.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    parser.add_argument("--note", default="", help="free text for the report, e.g. that the machine was shared")
    parser.add_argument("--no-compiled", action="store_true", help="skip the torch.compile'd path")
    parser.add_argument("--no-unfused", action="store_true", help="skip LAWN's unfused path (fused=False) rows")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: only checks that the script runs")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.malloc_kept = False if args.smoke else keep_freed_memory()  # process-wide: not in a smoke test
    rng = random.Random(0)
    started, clock = load_average(), time.perf_counter()
    if args.smoke:
        sets, args.batch = smoke_sets(), 4
    else:
        sets = [
            ParamSet("ResNet-18", resnet18_shapes(), "fc.weight"),
            ParamSet(f"ViT-B x{args.vit_blocks} blocks", vit_shapes(args.vit_blocks), "head.weight"),
        ]

    runs = []
    saved_threads = torch.get_num_threads()
    try:
        for i, threads in enumerate(args.threads):
            torch.set_num_threads(threads)
            results, recompiles = run_families(sets, args, rng, clock, memory=i == 0)
            if i > 0:  # memory does not depend on the thread count: measured once, shown in every table
                for result, first in zip(results, runs[0].results):
                    for cfg, measured in zip(result.cfgs, first.cfgs):
                        cfg.peak_bytes, cfg.state_bytes = measured.peak_bytes, measured.state_bytes
            train = training_step_overhead(args.reps, args.per_round, args.batch, rng)
            for cfg in train:
                print(f"    train step {cfg.label:37s} {ms(statistics.median(cfg.times)):>9s} ms  {overhead(cfg):+.2%}")
            runs.append(Run(threads, results, train, recompiles))
    finally:
        torch.set_num_threads(saved_threads)

    text = report(args, sets, runs, started, time.perf_counter() - clock)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
