"""``lawn lottery SPEC``: winning tickets vs random re-initialization vs prune & fine-tune, at equal epochs.

For every seed × learning rate: train the dense network for ``epochs`` (``E``; θ₀, θ_k and θ_T are saved next
to the results file, so a resumed study does not retrain it), then for every sparsity ``s`` compute global (or
per-layer) magnitude masks from θ_T and train each arm for another ``E`` epochs, so every arm has seen
``2E`` epochs in all:

- ``ticket``: rewind the survivors to θ₀ (θ_k with ``rewind_steps = k``: late rewinding), train with the
  dense schedule (learning rate ``lr``);
- ``reinit``: the same masks on a fresh draw of the model's init (seed ``seed + 1000``), dense schedule;
- ``finetune``: keep the trained survivors, train at ``finetune_lr_scale × lr`` (same schedule shape);
- ``dense_extra``: the dense network trained on for ``E`` epochs at ``finetune_lr_scale × lr`` (the
  compute-matched dense control, sparsity 0).

The dense row (arm ``dense``, ``E`` epochs) records ``lawn.weight_correlation(θ₀, θ_T)`` (and θ_k vs θ_T)
over the pruned weights. Optional IMP (``imp_lrs``, ``imp_rounds``, ``imp_rate``): ``imp_ticket`` rewinds to
θ_k after each round, ``imp_finetune`` keeps the weights and trains at ``finetune_lr_scale × lr``; both train
``E`` epochs per round, so they compare at equal epochs with each other. Every arm uses the same batch order
(the run's seed). Rows are appended to a JSONL file like a sweep's and skipped on resume by key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import lawn
from lawn import pruning
from lawn.harness.checked import run_config
from lawn.harness.config import COMPARE_KEYS, LOTTERY_FIELDS, RunConfig, load_mapping, parse_comparisons
from lawn.harness.datasets import load_data
from lawn.harness.models import build_model
from lawn.harness.optimizers import build_base_optimizer
from lawn.harness.results import append_row, completed_keys
from lawn.harness.schedule import build_scheduler
from lawn.harness.tasks import batch_starts, make_task
from lawn.harness.train import _seed_everything, resolve_device

ARMS = ("dense_extra", "ticket", "reinit", "finetune")
REINIT_SEED_OFFSET = 1000


@dataclass(frozen=True)
class LotterySpec:
    """A lottery study: ``base`` run config fields (no ``lr``/``seed``/``method``) and the study's axes."""

    base: dict[str, Any] = field(default_factory=dict)
    lrs: tuple[float, ...] = (0.01, 0.1)
    seeds: tuple[int, ...] = (0, 1, 2)
    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
    arms: tuple[str, ...] = ARMS
    scope: str = "global"
    rewind_steps: int = 0
    finetune_lr_scale: float = 0.1
    correlation_top: float = 0.2
    imp_lrs: tuple[float, ...] = ()
    imp_rounds: int = 3
    imp_rate: float = 0.5

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LotterySpec:
        if not isinstance(data, dict):
            raise TypeError(f"lottery spec: expected a mapping, got {type(data).__name__}")
        parse_comparisons(data, LOTTERY_FIELDS)  # [[compare]] tables are for `lawn report --spec`
        data = {k: v for k, v in data.items() if k not in COMPARE_KEYS}
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"lottery spec: unknown key(s) {unknown}; known keys: {sorted(known)}")
        base = data.get("base", {})
        if not isinstance(base, dict):
            raise TypeError("lottery spec: 'base' must be a mapping of run config fields")
        clash = sorted(set(base) & {"lr", "seed", "method"})
        if clash:
            raise ValueError(f"lottery spec: base sets {clash}; lr and seed are the study's axes, method is plain")
        fields: dict[str, Any] = {"base": dict(base)}
        for name in ("lrs", "seeds", "sparsities", "arms", "imp_lrs"):
            if name in data:
                value = data[name]
                if not isinstance(value, (list, tuple)) or (not value and name != "imp_lrs"):
                    raise ValueError(f"lottery spec: {name}: expected a non-empty list, got {value!r}")
                fields[name] = tuple(value)
        for name in ("scope", "rewind_steps", "finetune_lr_scale", "correlation_top", "imp_rounds", "imp_rate"):
            if name in data:
                fields[name] = data[name]
        spec = cls(**fields)
        spec.check()
        return spec

    @classmethod
    def load(cls, path: str | Path) -> LotterySpec:
        try:
            return cls.from_dict(load_mapping(path))
        except (ValueError, TypeError) as err:
            raise type(err)(f"{path}: {err}") from err

    def check(self) -> None:
        for s in self.sparsities:
            pruning.masks.check_sparsity(s, "sparsities")
            if s == 0:
                raise ValueError("lottery spec: sparsities: 0 prunes nothing (the dense arms cover it)")
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ValueError(f"lottery spec: arms: unknown {bad}; choose from {list(ARMS)}")
        if self.scope not in pruning.masks.SCOPES:
            raise ValueError(f"lottery spec: scope: expected one of {pruning.masks.SCOPES}, got {self.scope!r}")
        if not isinstance(self.rewind_steps, int) or self.rewind_steps < 0:
            raise ValueError(f"lottery spec: rewind_steps: expected an integer >= 0, got {self.rewind_steps!r}")
        for name in ("finetune_lr_scale", "correlation_top"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"lottery spec: {name}: expected a number in (0, 1], got {value!r}")
        if not isinstance(self.imp_rounds, int) or self.imp_rounds < 1:
            raise ValueError(f"lottery spec: imp_rounds: expected an integer >= 1, got {self.imp_rounds!r}")
        pruning.masks.check_sparsity(self.imp_rate, "imp_rate")
        for lr in (*self.lrs, *self.imp_lrs):
            self.config(lr, self.seeds[0])  # every run config is valid

    def config(self, lr: float, seed: int) -> RunConfig:
        return run_config({**self.base, "lr": lr, "seed": seed, "method": "plain"})

    def study_fields(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "rewind_steps": self.rewind_steps,
            "finetune_lr_scale": self.finetune_lr_scale,
        }


def row_key(config: RunConfig, lottery: dict[str, Any]) -> str:
    text = json.dumps({"run": config.key(), "lottery": lottery}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def fit(
    model: torch.nn.Module,
    task: Any,
    config: RunConfig,
    lr: float,
    *,
    snapshot_step: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` (masked or not) for ``config.epochs`` at ``lr`` with the config's optimizer and
    schedule; batch order from ``config.seed``. Returns final metrics, each epoch's last batch loss, wall time."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = len(batch_starts(task.train_size, config.batch_size))
    total = steps_per_epoch * config.epochs
    optimizer = build_base_optimizer(
        config.optimizer, model.parameters(), lr=lr, weight_decay=config.weight_decay, momentum=config.momentum
    )
    scheduler = build_scheduler(optimizer, config, total)
    snapshot = copy.deepcopy(model.state_dict()) if snapshot_step == 0 else None
    train_losses: list[float] = []  # the last batch's loss of each epoch
    step, diverged = 0, False
    model.train()
    for _ in range(config.epochs):
        for inputs, targets in task.epoch(config.batch_size, generator):
            loss = task.loss(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if snapshot_step is not None and step == snapshot_step:
                snapshot = copy.deepcopy(model.state_dict())
        train_losses.append(float(loss.detach()))
        if not math.isfinite(train_losses[-1]):
            diverged = True
            break
    model.eval()
    val, test = task.evaluate(model, "val"), task.evaluate(model, "test")
    if snapshot_step is not None and snapshot is None:
        raise ValueError(f"rewind_steps: {snapshot_step} is beyond the dense run's {total} steps")
    return {
        "val_metric": None if diverged else val["metric"],
        "test_metric": None if diverged else test["metric"],
        "diverged": diverged,
        "train_losses": train_losses,
        "seconds": round(time.perf_counter() - started, 3),
        "snapshot": snapshot,
    }


def _row(config: RunConfig, task: Any, lottery: dict[str, Any], fitted: dict[str, Any], **extra: Any) -> dict:
    return {
        "key": row_key(config, lottery),
        "experiment": "lottery",
        "config": config.to_dict(),
        "tuned": [],
        "metric": task.metric,
        "val_metric": fitted["val_metric"],
        "test_metric": fitted["test_metric"],
        "diverged": fitted["diverged"],
        "lottery": lottery,
        "train_losses": fitted["train_losses"],
        "versions": {"lawn": lawn.__version__, "torch": torch.__version__},
        "timing": {"seconds": fitted["seconds"], "device": config.device},
        **extra,
    }


def _fresh_model(config: RunConfig, data: Any, device: torch.device) -> torch.nn.Module:
    _seed_everything(config.seed, device)
    return build_model(config.model, data, config.width).to(device)


def _planned(spec: LotterySpec, lr: float, epochs: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of one (learning rate, seed): the dense row and the one-shot arms; the IMP rows."""
    study = spec.study_fields()
    wanted: list[dict[str, Any]] = [
        {
            **study,
            "arm": "dense",
            "sparsity": 0.0,
            "arm_epochs": epochs,
            "total_epochs": epochs,
            "correlation_top": spec.correlation_top,
        }
    ]
    if lr in spec.lrs:
        for arm in spec.arms:
            for s in [0.0] if arm == "dense_extra" else spec.sparsities:
                wanted.append({**study, "arm": arm, "sparsity": s, "arm_epochs": epochs, "total_epochs": 2 * epochs})
    imp_rows = []
    if lr in spec.imp_lrs:
        for arm in ("imp_ticket", "imp_finetune"):
            for r in range(1, spec.imp_rounds + 1):
                imp_rows.append(
                    {
                        **study,
                        "arm": arm,
                        "sparsity": round(1 - (1 - spec.imp_rate) ** r, 6),
                        "round": r,
                        "imp_rate": spec.imp_rate,
                        "arm_epochs": epochs,
                        "total_epochs": (r + 1) * epochs,
                    }
                )
    return wanted, imp_rows


def run_lottery(
    spec: LotterySpec, results: str | Path, *, device: str = "cpu", progress: bool = False
) -> dict[str, int]:
    """Run every missing row of ``spec`` (see the module doc); returns counts ``done``, ``skipped``, ``total``."""
    results = Path(results)
    done_keys = completed_keys(results)
    dev = resolve_device(device)
    counts = {"done": 0, "skipped": 0, "total": 0}
    data_cache: dict[str, Any] = {}
    plan = [(seed, lr) for seed in spec.seeds for lr in sorted(set(spec.lrs) | set(spec.imp_lrs))]
    bar = tqdm(total=len(plan), desc="lottery", disable=not progress, unit="lr×seed")
    for seed, lr in plan:
        config = spec.config(lr, seed).replace(device=str(dev))
        wanted, imp_rows = _planned(spec, lr, config.epochs)
        todo = {row_key(config, w) for w in wanted + imp_rows} - done_keys
        counts["total"] += len(wanted) + len(imp_rows)
        counts["skipped"] += len(wanted) + len(imp_rows) - len(todo)
        if todo:
            data_id = json.dumps({k: v for k, v in config.to_dict().items() if k in _DATA_FIELDS}, sort_keys=True)
            if data_id not in data_cache:
                data_cache[data_id] = load_data(config)
            counts["done"] += _run_point(
                spec, config, data_cache[data_id], dev, wanted, imp_rows, todo, results, done_keys
            )
        bar.update(1)
    bar.close()
    return counts


def _run_point(
    spec: LotterySpec,
    config: RunConfig,
    data: Any,
    dev: torch.device,
    wanted: list[dict[str, Any]],
    imp_rows: list[dict[str, Any]],
    todo: set[str],
    results: Path,
    done_keys: set[str],
) -> int:
    """Train one (learning rate, seed): the dense run (or its saved states), then every missing arm row."""
    lr, seed = config.lr, config.seed
    task = make_task(data, dev, config.negatives_per_positive)
    written = 0

    def emit(lottery: dict[str, Any], fitted: dict[str, Any], **extra: Any) -> None:
        nonlocal written
        row = _row(config, task, lottery, fitted, **extra)
        if row["key"] not in done_keys:
            append_row(results, row)
            done_keys.add(row["key"])
            written += 1

    dense_key = row_key(config, wanted[0])
    states_path = results.with_name(results.name + ".states") / f"{dense_key}.pt"
    model = _fresh_model(config, data, dev)
    params = pruning.prunable_weights(model)
    if states_path.is_file() and dense_key in done_keys:
        states = torch.load(states_path, map_location=dev, weights_only=True)
    else:
        theta0 = copy.deepcopy(model.state_dict())
        fitted = fit(model, task, config, lr, snapshot_step=spec.rewind_steps)
        states = {"initial": theta0, "rewind": fitted["snapshot"], "trained": copy.deepcopy(model.state_dict())}
        states_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(states, states_path)
        top = spec.correlation_top
        correlation = {
            "initial": lawn.weight_correlation(theta0, states["trained"], top, params),
            "rewind": lawn.weight_correlation(states["rewind"], states["trained"], top, params),
        }
        emit(wanted[0], fitted, correlation=correlation)
    trained_model = _fresh_model(config, data, dev)
    trained_model.load_state_dict(states["trained"])
    for lottery in wanted[1:]:
        if row_key(config, lottery) not in todo:
            continue
        arm, s = lottery["arm"], lottery["sparsity"]
        model = copy.deepcopy(trained_model)
        arm_lr = lr * spec.finetune_lr_scale if arm in ("dense_extra", "finetune") else lr
        if arm != "dense_extra":
            masks = lawn.magnitude_masks(trained_model, s, spec.scope, params)
            if arm == "ticket":
                lawn.rewind(model, states["rewind"], masks)
            elif arm == "reinit":
                lawn.reinitialize(model, masks, seed=seed + REINIT_SEED_OFFSET)
            else:  # finetune
                lawn.apply_masks(model, masks)
        fitted = fit(model, task, config, arm_lr)
        emit(lottery, fitted, measured_sparsity=lawn.sparsity_report(model, params)["total"]["sparsity"], arm_lr=arm_lr)
    for reset, arm, arm_lr in (("rewind", "imp_ticket", lr), ("continue", "imp_finetune", lr * spec.finetune_lr_scale)):
        mine = [w for w in imp_rows if w["arm"] == arm]
        if not any(row_key(config, w) in todo for w in mine):
            continue
        model = copy.deepcopy(trained_model)  # round 0 (the dense run) is done: IMP starts by pruning θ_T
        calls = {"n": 0}

        def train_round(m: torch.nn.Module, arm_lr: float = arm_lr, calls: dict = calls) -> Any:
            calls["n"] += 1
            return None if calls["n"] == 1 else fit(m, task, config, arm_lr)

        def on_round(record: dict[str, Any], mine: list = mine, arm_lr: float = arm_lr) -> None:
            if record["round"] > 0:
                emit(mine[record["round"] - 1], record["result"], measured_sparsity=record["sparsity"], arm_lr=arm_lr)

        lawn.iterative_magnitude_pruning(
            model,
            train_round,
            spec.imp_rounds,
            spec.imp_rate,
            initial_state=states["rewind"],
            reset=reset,
            scope=spec.scope,
            params=params,
            on_round=on_round,
        )
    return written


_DATA_FIELDS = ("dataset", "data_dir", "data_options", "train_limit", "test_limit", "val_fraction", "data_seed")
