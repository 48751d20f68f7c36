"""One training run: ``train(config) → result row`` (plain JSON data), deterministic given the config.

Per epoch (and once before training, epoch 0) the row's ``history`` records: train loss and accuracy
(averaged over the epoch's batches), validation and test loss and metric, ``logit_norm`` (mean ‖logits‖ on
the test set), ``constrained_norm`` (``sqrt(Σ‖W‖²)`` over the final homogeneous weights, recorded for every
method so trajectories compare; ``None`` under MimicNorm, which has none), ``constrained_norms`` (each such
``‖W‖``), ``weight_norm`` (all parameters), ``tangential_step`` (the mean over the epoch's steps of the step's part
tangent to the sphere, relative: ``‖Δ − (⟨Δ, W⟩/‖W‖²) W‖ / ‖W‖`` over the final homogeneous weights taken as one
vector), the learning rate and LAWN's phase. ``train_loss`` is the data
loss: a method's penalty (``ssi``) is trained on but not included. The row's ``val_metric`` /
``test_metric`` are those of the last epoch; a run whose training loss stops being finite is marked
``diverged`` and has ``None`` there.
"""

from __future__ import annotations

import copy
import math
import os
import time
from typing import Any

import torch
from tqdm.auto import tqdm

import lawn
from lawn.harness.checked import checked
from lawn.harness.config import RunConfig
from lawn.harness.datasets import load_data
from lawn.harness.methods import METHODS, build_optimizer, constrained_params, free_steps
from lawn.harness.models import build_model
from lawn.harness.normalization import attach, convert, has_final_homogeneous
from lawn.harness.schedule import build_scheduler, scaled_lr
from lawn.harness.tasks import EVAL_BATCH, batch_starts, make_task


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; an unavailable device is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available (use --device cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device: 'mps' requested but it is not available (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device: {err}") from err


def _seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@torch.no_grad()
def _norms(model: torch.nn.Module, constrained: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
    each = {name: float(p.detach().float().norm()) for name, p in constrained}
    total = sum(float(p.detach().float().norm()) ** 2 for p in model.parameters())
    return {
        "constrained_norm": math.sqrt(sum(v * v for v in each.values())) if each else None,
        "constrained_norms": each,
        "weight_norm": math.sqrt(total),
    }


@torch.no_grad()
def _tangential_step(before: list[torch.Tensor], after: list[torch.Tensor]) -> torch.Tensor:
    """``‖Δ_tan‖ / ‖W‖`` for the step ``before → after`` (all tensors as one vector; no host sync)."""
    delta = torch.cat([(a - b).flatten().double() for a, b in zip(after, before)])
    w = torch.cat([b.flatten().double() for b in before])
    w2 = w.dot(w)
    tangent = delta - (delta.dot(w) / w2) * w
    return tangent.norm() / w2.sqrt()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def train(config: RunConfig, *, data: Any = None, progress: bool = False) -> dict[str, Any]:
    """Train ``config`` and return its result row (see the module docstring)."""
    started = time.perf_counter()
    config = checked(config)
    device = resolve_device(config.device)
    data = load_data(config) if data is None else data
    task = make_task(data, device, config.negatives_per_positive)
    if task.train_size < 2:
        raise ValueError(f"{config.dataset}: the training split has {task.train_size} example(s)")
    _seed_everything(config.seed, device)
    generator = torch.Generator().manual_seed(config.seed)
    model = convert(build_model(config.model, data, config.width), config, data).to(device)
    example_inputs = task.example_inputs()

    constrained: list[tuple[str, torch.Tensor]] = []
    if has_final_homogeneous(config):
        snapshot = copy.deepcopy(model.state_dict())  # discovery may run forward passes (BN running stats)
        constrained = constrained_params(model, example_inputs)
        model.load_state_dict(snapshot)

    steps_per_epoch = len(batch_starts(task.train_size, config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    lr = scaled_lr(config)
    method = METHODS[config.method]
    optimizer = build_optimizer(config, model, constrained, lr, total_steps, example_inputs=example_inputs)
    attach(optimizer, model, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    is_lawn = isinstance(optimizer, lawn.LAWN)
    step_loss = None if method.step_loss is None else method.step_loss(model, config)

    def record(
        epoch: int, train_loss: float | None, train_acc: float | None, tangential: float | None = None
    ) -> dict[str, Any]:
        model.eval()
        val, test = task.evaluate(model, "val"), task.evaluate(model, "test")
        model.train()
        row = {
            "epoch": epoch,
            "step": epoch * steps_per_epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "phase": optimizer.phase if is_lawn else None,
            "train_loss": _finite(train_loss),
            "train_accuracy": train_acc,
            "val_loss": _finite(val["loss"]),
            "val_metric": val["metric"],
            "test_loss": _finite(test["loss"]),
            "test_metric": test["metric"],
            "logit_norm": _finite(test["logit_norm"]),
            "tangential_step": tangential,
            **_norms(model, constrained),
        }
        if "auc" in test:
            row["val_auc"], row["test_auc"] = val["auc"], test["auc"]
        return row

    history = [record(0, None, None)]
    diverged = False
    bar = tqdm(total=total_steps, desc=_label(config), disable=not progress, leave=False, dynamic_ncols=True)
    model.train()
    train_seconds, steps_run = 0.0, 0
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        tangential_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = steps_done = 0
        blew_up = False
        for inputs, targets in task.epoch(config.batch_size, generator):
            if step_loss is None:
                logits = model(inputs)
                loss = trained = task.loss(logits, targets)
            else:  # the method's own loss (afan); ``loss`` stays the clean data loss for logging
                trained, logits, loss = step_loss(inputs, targets, task.loss)
            penalty = None if method.penalty is None else method.penalty(model, config)
            optimizer.zero_grad(set_to_none=True)
            (trained if penalty is None else trained + penalty).backward()
            before = [p.detach().clone() for _, p in constrained]
            try:
                optimizer.step()
            except ValueError:  # LAWN refuses to freeze non-finite norms: the run has already diverged
                if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                    raise
                blew_up = True
                break
            scheduler.step()
            if constrained:
                tangential_sum += _tangential_step(before, [p.detach() for _, p in constrained])
            loss_sum += loss.detach() * len(targets)
            correct += task.correct(logits.detach(), targets)
            seen += len(targets)
            steps_done += 1
            steps_run += 1
            bar.update(1)
        train_seconds += time.perf_counter() - epoch_started
        train_loss = math.nan if blew_up else float(loss_sum) / max(1, seen)
        tangential = _finite(float(tangential_sum) / max(1, steps_done)) if constrained else None
        history.append(record(epoch, train_loss, float(correct) / max(1, seen), tangential))
        bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3g}", val=f"{history[-1]['val_metric']:.3f}")
        if not math.isfinite(train_loss):
            diverged = True
            break
    bar.close()

    last = history[-1]
    result: dict[str, Any] = {
        "key": config.key(),
        "config": config.to_dict(),
        "metric": task.metric,
        "val_metric": None if diverged else last["val_metric"],
        "test_metric": None if diverged else last["test_metric"],
        "diverged": diverged,
        "epochs_run": len(history) - 1,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "scaled_lr": lr,
        "free_steps": free_steps(config, total_steps) if is_lawn and config.method != "lawn_auto" else None,
        "switch_step": optimizer.switch_step if is_lawn else None,
        "constrained": [name for name, _ in constrained],
        "uses_weight_decay": method.uses_weight_decay,
        "history": history,
        "versions": {"lawn": lawn.__version__, "torch": torch.__version__},
        "timing": {"seconds": round(time.perf_counter() - started, 3), "device": str(device)},
    }
    result["cost"] = {"passes_per_step": getattr(step_loss, "passes_after_split", 1)}
    result["timing"]["step_seconds"] = round(train_seconds / max(1, steps_run), 6)
    if config.eval_noise_std > 0:
        result["noisy_test_metric"] = None if diverged else noisy_accuracy(task, model, config)
    if "test_auc" in last:
        result["val_auc"] = None if diverged else last["val_auc"]
        result["test_auc"] = None if diverged else last["test_auc"]
    return result


@torch.no_grad()
def noisy_accuracy(task: Any, model: torch.nn.Module, config: RunConfig) -> float:
    """Test accuracy (eval mode) on ``x + eval_noise_std · ξ``, ``ξ ~ N(0, I)`` drawn from a generator seeded
    with ``data_seed``: the same noisy test set for every run of a data set."""
    x, y = task.splits["test"]
    generator = torch.Generator().manual_seed(config.data_seed)
    was_training = model.training
    model.eval()
    correct = 0.0
    for start in range(0, len(y), EVAL_BATCH):
        batch = x[start : start + EVAL_BATCH]
        noise = torch.randn(batch.shape, generator=generator).to(batch.device, batch.dtype)
        logits = model(batch + config.eval_noise_std * noise)
        correct += float(task.correct(logits, y[start : start + EVAL_BATCH]))
    model.train(was_training)
    return correct / len(y)


def _label(config: RunConfig) -> str:
    return f"{config.optimizer}/{config.method} bs={config.batch_size} lr={config.lr:g} seed={config.seed}"
