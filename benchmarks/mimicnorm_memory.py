"""Memory of one training step: a small BN ResNet vs its MimicNorm conversion (CPU, no GPU needed).

Two measurements of the same step (forward, backward, SGD-momentum update, batch of 32×32 RGB images):

* **saved activations**: the bytes autograd keeps for the backward pass, counted exactly with
  ``torch.autograd.graph.saved_tensors_hooks`` (unique storages, parameters excluded). This is the part
  that BN layers add to (each BN saves its input and creates an output the next op saves) and it does not
  depend on the device or allocator.
* **step peak**: the peak of live CPU memory during the step, from ``torch.profiler`` memory events
  (allocations and frees summed in time order, at the granularity of one op), relative to the start.

Usage::

    PYTHONPATH=src python benchmarks/mimicnorm_memory.py [--batch-size 64] [--width 32]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lawn import center_filters_after_step, convert_to_mimicnorm

MiB = 2**20


class Block(nn.Module):
    """torchvision-style basic block: conv-BN-ReLU-conv-BN, plus a (1×1 conv-BN) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def small_resnet(width: int, num_classes: int = 10) -> nn.Sequential:
    """A ResNet-10-like CIFAR network: stem, four blocks (two at 32×32, two at 16×16), pool, linear."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        Block(width, width, 1),
        Block(width, width, 1),
        Block(width, 2 * width, 2),
        Block(2 * width, 2 * width, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the unique non-parameter storages autograd saves during the forward pass."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def step_peak_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> int:
    """Peak of live CPU memory during one full training step, relative to its start (torch.profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mimicnorm: bool) -> tuple[int, int]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if mimicnorm:
        center_filters_after_step(optimizer, model)
    model.train()
    for _ in range(2):  # warm up: momentum buffers exist, so every measured step is alike
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return saved_activation_bytes(model, x, y), step_peak_bytes(model, optimizer, x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))
    bn_model = small_resnet(args.width)
    mimic_model = convert_to_mimicnorm(bn_model, num_classes=10)
    rows = {"BN": measure(bn_model, x, y, False), "MimicNorm": measure(mimic_model, x, y, True)}
    params = {
        name: sum(p.numel() for p in m.parameters()) for name, m in (("BN", bn_model), ("MimicNorm", mimic_model))
    }
    print(f"batch {args.batch_size}, width {args.width}, input 3x32x32, torch {torch.__version__}, CPU")
    print("| model | parameters | saved activations (MiB) | step peak (MiB) |")
    print("|---|---:|---:|---:|")
    for name, (saved, peak) in rows.items():
        print(f"| {name} | {params[name]:,} | {saved / MiB:.1f} | {peak / MiB:.1f} |")
    (bn_saved, bn_peak), (mn_saved, mn_peak) = rows["BN"], rows["MimicNorm"]
    print(
        f"MimicNorm saves {100 * (1 - mn_saved / bn_saved):.1f}% of saved activations and "
        f"{100 * (1 - mn_peak / bn_peak):.1f}% of the step peak."
    )


if __name__ == "__main__":
    main()
