"""The harness's training step, each fast path side by side with the form it replaced, in one process.

    PYTHONPATH=src python benchmarks/harness_step.py [--threads 1] [--rounds 7] [--steps 10]

Families (synthetic data, batch 128; every variant of a family trains its own copy of the same model):

- ``gather``: 128 rows of a 54,000 × 784 training set, ``index_select`` (the harness) vs ``x[idx]``.
- ``masked``: LeNet-300-100 with 50 % of every weight masked, fused SGD; the mask's float copy cached per
  buffer version (``WeightMask``) vs converted every forward pass.
- ``hardened``: LeNet-300-100 hardened at unify 0.45 + prune 0.45 (blocks of 4), fused Adam; one gather
  (``UnifiedBlocks.forward``) vs two ``index_put`` (``reference_forward``); the unhardened net as a yardstick.
- ``conv``: the harness's BN ResNet at width 8 on 1 × 28 × 28 inputs, fused SGD; ``channels_last`` vs contiguous.

Rounds run the variants of a family in a shuffled order; each variant's time in a round is the mean over
``--steps`` steps after one warm-up step; the table gives the median over rounds and, per variant, the median
of its ratio to the family's first variant within the same round (pairing cancels load that drifts).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lawn import pruning
from lawn import unification as U
from lawn.harness.models import build_model

BATCH = 128


class _Images:
    input_shape = (1, 28, 28)
    num_classes = 10


def _trainer(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor], None]:
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _per_pass_mask(self: pruning.WeightMask, weight: torch.Tensor) -> torch.Tensor:
    return weight * self.mask.to(weight.dtype)  # the form before the cache


def _families() -> dict[str, dict[str, Callable[[], None]]]:
    torch.manual_seed(0)
    x_all, y_all = torch.randn(54_000, 784), torch.randint(0, 10, (54_000,))
    images = x_all.view(-1, 1, 28, 28)
    order = torch.randperm(len(y_all))
    cursor = {"at": 0}

    def batch() -> torch.Tensor:
        cursor["at"] = (cursor["at"] + BATCH) % (len(order) - BATCH)
        return order[cursor["at"] : cursor["at"] + BATCH]

    families: dict[str, dict[str, Callable[[], None]]] = {}

    def index_select() -> None:
        idx = batch()
        x_all.index_select(0, idx), y_all.index_select(0, idx)

    def advanced_indexing() -> None:
        idx = batch()
        x_all[idx], y_all[idx]

    families["gather"] = {"index_select": index_select, "x[idx]": advanced_indexing}

    lenet = build_model("lenet300", _Images, 32)
    masked = copy.deepcopy(lenet)
    pruning.apply_masks(masked, pruning.magnitude_masks(masked, 0.5, scope="layer", params="all"))
    per_pass = copy.deepcopy(masked)
    for module in per_pass.modules():
        if isinstance(module, pruning.WeightMask):
            module.forward = _per_pass_mask.__get__(module)

    def sgd(m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
        return _trainer(m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, fused=True))

    def adam(m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
        return _trainer(m, torch.optim.Adam(m.parameters(), lr=1e-4, fused=True))

    def on_rows(step: Callable[[torch.Tensor, torch.Tensor], None]) -> Callable[[], None]:
        def run() -> None:
            idx = batch()
            step(x_all.index_select(0, idx), y_all.index_select(0, idx))

        return run

    def on_images(step: Callable[[torch.Tensor, torch.Tensor], None]) -> Callable[[], None]:
        def run() -> None:
            idx = batch()
            step(images.index_select(0, idx), y_all.index_select(0, idx))

        return run

    families["masked"] = {"cached mask": on_rows(sgd(masked)), "per-pass conversion": on_rows(sgd(per_pass))}

    hardened = copy.deepcopy(lenet)
    U.harden(hardened, U.BlockSpec(4), unify=0.45, prune=0.45)
    reference = copy.deepcopy(hardened)
    for _, _, p in U.hardened_layers(reference):
        p.forward = p.reference_forward
    families["hardened"] = {
        "one gather": on_rows(adam(hardened)),
        "two index_put": on_rows(adam(reference)),
        "unhardened": on_rows(adam(copy.deepcopy(lenet))),
    }

    resnet = build_model("resnet", _Images, 8)
    nhwc = copy.deepcopy(resnet).to(memory_format=torch.channels_last)
    families["conv"] = {"channels_last": on_images(sgd(nhwc)), "contiguous": on_images(sgd(resnet))}
    return families


def measure(rounds: int, steps: int) -> list[tuple[str, str, float, float]]:
    families = _families()
    times: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    shuffle = random.Random(0)
    for _ in range(rounds):
        for family, variants in families.items():
            names = list(variants)
            shuffle.shuffle(names)
            this_round = {}
            for name in names:
                variants[name]()  # warm-up
                started = time.perf_counter()
                for _ in range(steps):
                    variants[name]()
                this_round[name] = (time.perf_counter() - started) / steps
            first = this_round[next(iter(variants))]
            for name, seconds in this_round.items():
                times.setdefault((family, name), []).append(seconds)
                ratios.setdefault((family, name), []).append(seconds / first)
    return [
        (f, n, statistics.median(times[(f, n)]), statistics.median(ratios[(f, n)]))
        for f, variants in families.items()
        for n in variants
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds × {args.steps} steps")
    print("| family | variant | ms a step (median) | × the family's first variant |")
    print("|---|---|---|---|")
    for family, name, seconds, ratio in measure(args.rounds, args.steps):
        print(f"| {family} | {name} | {seconds * 1e3:.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
