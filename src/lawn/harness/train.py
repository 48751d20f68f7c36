"""One training run: ``train(config) → result row`` (plain JSON data), deterministic given the config.

Two parts: :func:`build` makes the model, data, optimizer and schedule of a config; :func:`fit` is the harness's
one training loop, shared by the plain runs (``train``), the lottery's arms (``lawn lottery``) and the study
drivers (``lawn.harness.studies``), each of which adds its own bookkeeping through ``fit``'s hooks.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

import lawn
from lawn.constraint import NormDiverged
from lawn.harness.checked import checked
from lawn.harness.config import RunConfig
from lawn.harness.corruptions import blurred_accuracy
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


class StepLoss(NamedTuple):
    """What one step's loss function returns: the loss to train on and the data loss to log."""

    trained: torch.Tensor  # ``backward()`` runs on this (the data loss plus a method's own terms)
    data: torch.Tensor  # the plain data loss, for the logs
    logits: torch.Tensor | None = None


@dataclass(frozen=True)
class Step:
    """One finished training step, as ``fit``'s ``after_step`` sees it."""

    number: int  # steps done so far, this one included
    inputs: Any
    targets: torch.Tensor
    loss: StepLoss
    before: Any  # what ``before_step`` returned for this step (None without one)


@dataclass(frozen=True)
class EpochEnd:
    """One finished (or cut short) epoch, as ``fit``'s ``end_epoch`` sees it."""

    epoch: int  # 1-based
    mean_loss: float  # the data loss averaged over the epoch's examples; NaN if the optimizer refused a step
    last_loss: float | None  # the data loss of the epoch's last step
    examples: int
    steps: int
    blew_up: bool  # the optimizer refused a step because the weights are no longer finite


@dataclass(frozen=True)
class Fitted:
    epochs_run: int
    steps: int
    seconds: float  # time spent in the epochs (``end_epoch`` excluded)
    stopped: bool  # ``end_epoch`` asked to stop, or the optimizer refused a step


Batches = Callable[[], Iterable[tuple[Any, torch.Tensor]]]
LossFn = Callable[[Any, torch.Tensor, int], "torch.Tensor | StepLoss"]


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batches: Batches,
    loss: LossFn,
    *,
    scheduler: Any = None,
    before_step: Callable[[], Any] | None = None,
    after_step: Callable[[Step], None] | None = None,
    end_epoch: Callable[[EpochEnd], bool] | None = None,
) -> Fitted:
    """The harness's one training loop: ``epochs`` passes over ``batches()`` (called once per epoch).

    Each step: ``loss(inputs, targets, steps_done)`` (a tensor, or a :class:`StepLoss` when the trained loss
    is not the logged one), ``zero_grad``, ``backward``, ``before_step()``, ``optimizer.step()``,
    ``scheduler.step()``, ``after_step(Step)``. After each epoch ``end_epoch(EpochEnd)`` returns whether to
    stop. A :class:`~lawn.constraint.NormDiverged` from ``optimizer.step()`` (LAWN refusing to freeze a norm
    that is not finite or too large), or any ``ValueError`` once the weights are no longer finite, ends the epoch
    and the fit as a blow-up; any other ``ValueError`` is raised.
    """
    model.train()
    steps = 0
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        loss_sum: torch.Tensor | None = None
        last: torch.Tensor | None = None
        examples = epoch_steps = 0
        blew_up = False
        for inputs, targets in batches():
            out = loss(inputs, targets, steps)
            parts = out if isinstance(out, StepLoss) else StepLoss(out, out)
            optimizer.zero_grad(set_to_none=True)
            parts.trained.backward()
            before = None if before_step is None else before_step()
            try:
                optimizer.step()
            except ValueError as refused:  # LAWN refuses to freeze a norm that blew up: the run has diverged
                diverged = isinstance(refused, NormDiverged)
                if not diverged and all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                    raise
                blew_up = True
                break
            if scheduler is not None:
                scheduler.step()
            steps += 1
            epoch_steps += 1
            last = parts.data.detach()
            weighted = last * len(targets)
            loss_sum = weighted if loss_sum is None else loss_sum + weighted
            examples += len(targets)
            if after_step is not None:
                after_step(Step(steps, inputs, targets, parts, before))
        seconds += time.perf_counter() - started
        mean = math.nan if blew_up or loss_sum is None else float(loss_sum) / max(1, examples)
        end = EpochEnd(epoch, mean, None if last is None else float(last), examples, epoch_steps, blew_up)
        stop = end_epoch(end) if end_epoch is not None else False
        if stop or blew_up:
            return Fitted(epoch, steps, seconds, True)
    return Fitted(epochs, steps, seconds, False)


@dataclass
class Built:
    """Everything a run needs, built from its config (see :func:`build`)."""

    config: RunConfig
    device: torch.device
    data: Any
    task: Any
    model: torch.nn.Module
    generator: torch.Generator  # the batch order
    example_inputs: Any
    constrained: list[tuple[str, torch.Tensor]]  # the final homogeneous weights (their norms are logged)
    steps_per_epoch: int
    total_steps: int
    lr: float
    method: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step_loss: Any  # the method's own loss (afan) or None

    def batches(self) -> Iterable[tuple[Any, torch.Tensor]]:
        """One epoch's batches, in the order the run's seed draws."""
        return self.task.epoch(self.config.batch_size, self.generator)


def fresh_model(config: RunConfig, data: Any, device: torch.device) -> torch.nn.Module:
    """The config's model drawn under its seed by the model's own initializer, in the config's normalization
    and memory format."""
    _seed_everything(config.seed, device)
    return in_memory_format(convert(build_model(config.model, data, config.width), config, data).to(device), config)


def in_memory_format(model: torch.nn.Module, config: RunConfig) -> torch.nn.Module:
    """``model`` with its 4-D tensors in ``config.memory_format`` (the same values; only their layout changes)."""
    if config.memory_format == "channels_last":
        model.to(memory_format=torch.channels_last)
    return model


def build(config: RunConfig, *, data: Any = None) -> Built:
    """Model, data, optimizer and schedule of ``config``, in the order that makes a run a function of its config."""
    config = checked(config)
    device = resolve_device(config.device)
    data = load_data(config) if data is None else data
    task = make_task(data, device, config.negatives_per_positive)
    if task.train_size < 2:
        raise ValueError(f"{config.dataset}: the training split has {task.train_size} example(s)")
    generator = torch.Generator().manual_seed(config.seed)
    model = fresh_model(config, data, device)
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
    step_loss = None if method.step_loss is None else method.step_loss(model, config)
    return Built(
        config, device, data, task, model, generator, example_inputs, constrained, steps_per_epoch, total_steps,
        lr, method, optimizer, scheduler, step_loss,
    )  # fmt: skip


def train(config: RunConfig, *, data: Any = None, progress: bool = False) -> dict[str, Any]:
    """Train ``config`` and return its result row (see the module docstring)."""
    started = time.perf_counter()
    run = build(config, data=data)
    config, task, model, optimizer, constrained = run.config, run.task, run.model, run.optimizer, run.constrained
    method, step_loss = run.method, run.step_loss
    is_lawn = isinstance(optimizer, lawn.LAWN)

    def record(
        epoch: int,
        train_loss: float | None,
        train_acc: float | None,
        tangential: float | None = None,
        evaluate: bool = True,
    ) -> dict[str, Any]:
        if evaluate:
            model.eval()
            val, test = task.evaluate(model, "val"), task.evaluate(model, "test")
            model.train()
        else:  # an epoch between evaluations (``eval_every``): its metrics are not measured
            val = test = {"loss": None, "metric": None, "logit_norm": None}
        row = {
            "epoch": epoch,
            "step": epoch * run.steps_per_epoch,
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

    def loss(inputs: Any, targets: torch.Tensor, step: int) -> StepLoss:
        if step_loss is None:
            logits = model(inputs)
            data_loss = trained = task.loss(logits, targets)
        else:  # the method's own loss (afan); ``data_loss`` stays the clean data loss for logging
            trained, logits, data_loss = step_loss(inputs, targets, task.loss)
        penalty = None if method.penalty is None else method.penalty(model, config)
        return StepLoss(trained if penalty is None else trained + penalty, data_loss, logits)

    sums = {"correct": torch.zeros((), device=run.device)}
    sums["tangential"] = torch.zeros((), dtype=torch.float64, device=run.device)

    def before_step() -> list[torch.Tensor]:
        return [p.detach().clone() for _, p in constrained]

    def after_step(step: Step) -> None:
        if constrained:
            sums["tangential"] += _tangential_step(step.before, [p.detach() for _, p in constrained])
        sums["correct"] += task.correct(step.loss.logits.detach(), step.targets)
        bar.update(1)

    def end_epoch(end: EpochEnd) -> bool:
        tangential = _finite(float(sums["tangential"]) / max(1, end.steps)) if constrained else None
        stop = not math.isfinite(end.mean_loss)
        due = stop or end.epoch == config.epochs or end.epoch % config.eval_every == 0
        accuracy = float(sums["correct"]) / max(1, end.examples)
        history.append(record(end.epoch, end.mean_loss, accuracy, tangential, evaluate=due))
        val = history[-1]["val_metric"]
        bar.set_postfix(epoch=end.epoch, loss=f"{end.mean_loss:.3g}", val="–" if val is None else f"{val:.3f}")
        sums["correct"].zero_()
        sums["tangential"].zero_()
        return stop

    history = [record(0, None, None)]
    bar = tqdm(total=run.total_steps, desc=_label(config), disable=not progress, leave=False, dynamic_ncols=True)
    fitted = fit(
        model,
        optimizer,
        config.epochs,
        run.batches,
        loss,
        scheduler=run.scheduler,
        before_step=before_step,
        after_step=after_step,
        end_epoch=end_epoch,
    )
    bar.close()
    diverged = fitted.stopped

    last = history[-1]
    result: dict[str, Any] = {
        "key": config.key(),
        "config": config.to_dict(),
        "metric": task.metric,
        "val_metric": None if diverged else last["val_metric"],
        "test_metric": None if diverged else last["test_metric"],
        "diverged": diverged,
        "epochs_run": len(history) - 1,
        "steps_per_epoch": run.steps_per_epoch,
        "total_steps": run.total_steps,
        "scaled_lr": run.lr,
        "free_steps": free_steps(config, run.total_steps) if is_lawn and config.method != "lawn_auto" else None,
        "switch_step": optimizer.switch_step if is_lawn else None,
        "constrained": [name for name, _ in constrained],
        "uses_weight_decay": method.uses_weight_decay,
        "history": history,
        "versions": {"lawn": lawn.__version__, "torch": torch.__version__},
        "timing": {"seconds": round(time.perf_counter() - started, 3), "device": str(run.device)},
    }
    result["cost"] = {"passes_per_step": getattr(step_loss, "passes_after_split", 1)}
    result["timing"]["step_seconds"] = round(fitted.seconds / max(1, fitted.steps), 6)
    if config.eval_noise_std > 0:
        result["noisy_test_metric"] = None if diverged else noisy_accuracy(task, model, config)
    if config.eval_blur_sigma > 0:
        result["blurred_test_metric"] = None if diverged else blurred_accuracy(task, model, config.eval_blur_sigma)
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
