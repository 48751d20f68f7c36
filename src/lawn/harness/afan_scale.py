"""The scale of the feature A-FAN perturbs: statistics of the split's output over training, to state a step size
as a fraction of it.

    python -m lawn.harness.afan_scale --set dataset=fashion_mnist --set model=resnet --set width=8 ... --epochs 10

Trains the config's model with the config's base optimizer and schedule, plain loss (the ``afan_*`` fields only
name the split, ``afan_layer``), and before training and after each epoch reads the split's output on a fixed batch
of 1024 training images in training mode (batch statistics, as A-FAN's passes see it; running statistics left
alone): per-element ``rms = sqrt(mean h²)``, ``mean |h|``, the 99th percentile of ``|h|`` and the mean
per-example ``‖h‖₂``. An L∞ sign perturbation of size ``r`` per element has per-element RMS ``r``, so ``r / rms``
is its size relative to the feature.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from lawn.afan import _frozen_running_stats, _resolve
from lawn.harness.checked import checked
from lawn.harness.config import RunConfig, parse_assignment
from lawn.harness.datasets import load_data
from lawn.harness.methods import afan_layer, build_optimizer
from lawn.harness.models import build_model
from lawn.harness.normalization import convert
from lawn.harness.schedule import build_scheduler, scaled_lr
from lawn.harness.tasks import batch_starts, make_task
from lawn.harness.train import EpochEnd, fit


@torch.no_grad()
def split_statistics(model: torch.nn.Module, layer: str, x: torch.Tensor) -> dict[str, float]:
    """``rms``, ``mean_abs``, ``p99_abs`` and ``example_norm`` of ``layer``'s output on ``x`` (training mode, running
    statistics untouched)."""
    captured: list[torch.Tensor] = []
    handle = _resolve(model, layer).register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        with _frozen_running_stats(model):
            model(x)
    finally:
        handle.remove()
    h = captured[0].double()
    return {
        "rms": float(h.pow(2).mean().sqrt()),
        "mean_abs": float(h.abs().mean()),
        "p99_abs": float(torch.quantile(h.abs().flatten()[:1_000_000], 0.99)),
        "example_norm": float(h.flatten(1).norm(dim=1).mean()),
        "elements_per_example": int(h[0].numel()),
    }


def feature_scale(config: RunConfig) -> list[dict[str, Any]]:
    """Split statistics before training and after each of ``config.epochs`` epochs of plain training."""
    config = checked(config.replace(method="plain"))
    torch.manual_seed(config.seed)
    data = load_data(config)
    task = make_task(data, torch.device("cpu"), config.negatives_per_positive)
    model = convert(build_model(config.model, data, config.width), config, data)
    layer = afan_layer(config, model)
    probe = task.splits["train"][0][:1024]
    total = len(batch_starts(task.train_size, config.batch_size)) * config.epochs
    optimizer = build_optimizer(config, model, [], scaled_lr(config), total, example_inputs=task.example_inputs())
    scheduler = build_scheduler(optimizer, config, total)
    generator = torch.Generator().manual_seed(config.seed)
    out = [{"epoch": 0, "layer": layer, **split_statistics(model, layer, probe)}]
    counts = {"correct": 0, "seen": 0}

    def loss(inputs: Any, targets: torch.Tensor, _steps: int) -> torch.Tensor:
        logits = model(inputs)
        counts["correct"] += int(task.correct(logits.detach(), targets))
        counts["seen"] += len(targets)
        return task.loss(logits, targets)

    def end_epoch(end: EpochEnd) -> bool:
        accuracy = counts["correct"] / max(1, counts["seen"])
        counts.update(correct=0, seen=0)
        out.append({"epoch": end.epoch, "layer": layer, "train_accuracy": accuracy,
                    **split_statistics(model, layer, probe)})  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
        return False

    fit(
        model,
        optimizer,
        config.epochs,
        lambda: task.epoch(config.batch_size, generator),
        loss,
        scheduler=scheduler,
        end_epoch=end_epoch,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    fields = dict(parse_assignment(text) for text in args.set)
    torch.set_num_threads(1)
    rows = feature_scale(RunConfig.from_dict(fields))
    print(json.dumps(rows[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
