"""``lawn lottery SPEC``: winning tickets vs random re-initialization vs prune & fine-tune, at equal epochs.

For every seed × learning rate: train the dense network for ``epochs`` (``E``; θ₀, θ_k and θ_T are saved next
to the results file, so a resumed study does not retrain it), then for every sparsity ``s`` compute global (or
per-layer) magnitude masks from θ_T and train each arm for another ``E`` epochs, so every arm has seen
``2E`` epochs in all:

- ``ticket``: rewind the survivors to θ₀ (θ_k with ``rewind_steps = k``: late rewinding), train with the
  dense schedule (learning rate ``lr``);
- ``reinit``: the same masks on a fresh draw of the model's own initializer (the model built again under seed
  ``seed + 1000``, as the harness builds every model), dense schedule;
- ``finetune``: keep the trained survivors, train at ``finetune_lr_scale × lr`` (same schedule shape);
- ``dense_extra``: the dense network trained on for ``E`` epochs at ``finetune_lr_scale × lr`` (the
  compute-matched dense control, sparsity 0).
- ``late_ticket``: rewind the survivors to θ_k, ``k = late_rewind_steps`` (beside ``ticket`` at θ₀);
- ``random_mask``: the random-pruning control: as many survivors per tensor as the magnitude mask, at random
  positions (:func:`lawn.pruning.random_masks`), rewound like ``ticket``;
- ``lr_rewind``: learning-rate rewinding (Renda et al.): keep the trained survivors, replay the dense schedule
  from its start at ``lr``;
- ``finetune_dense``: keep the trained survivors, train at ``lr``. With ``finetune_schedule = "constant"`` the
  fine-tuning arms (and ``dense_extra``) train at a constant learning rate, as fine-tuning does; with ``"same"``
  they replay the dense schedule's shape (``finetune_dense`` would then be ``lr_rewind``: refused).

``prune_layers = "all"`` prunes every conv/linear weight (default ``"inner"``: all but the first and the last).
Every arm row records ``correlation.start``: ``weight_correlation`` of its start with its end, over the survivors.

The dense row (arm ``dense``, ``E`` epochs) records ``lawn.pruning.weight_correlation(θ₀, θ_T)`` (and θ_k vs θ_T)
over the pruned weights. Optional IMP (``imp_lrs``, ``imp_rounds``, ``imp_rate``): ``imp_ticket`` rewinds to
θ_k after each round, ``imp_finetune`` keeps the weights and trains at ``finetune_lr_scale × lr``; both train
``E`` epochs per round, so they compare at equal epochs with each other. ``imp_arms`` adds the chains
``imp_late_ticket``, ``imp_lr_rewind`` and ``imp_finetune_dense`` (the one-shot arms, iterated) and the controls
``imp_reinit`` and ``imp_random_mask``, trained ``E`` epochs once per round on the ``imp_ticket`` chain's mask
(only at ``imp_control_rounds`` when given). ``arms = []`` runs only the dense row and IMP.
Every arm uses the same batch order (the run's seed). Rows are appended to a JSONL file like a sweep's and skipped
on resume by key. A resumed chain trains its written rounds again (each round's mask comes from its trained
weights), and a lost states file means the dense net is trained again: every row records ``weights_digest``
(:func:`lawn.harness.same_run.state_digest` of the net it trained), and a net trained again that differs from its
row (CPU training is not bit-reproducible across machines) stops the study with
:class:`~lawn.harness.same_run.ResumeMismatch` rather than mix two nets in one (lr, seed).

The whole spec is checked before anything trains (every problem reported at once, data sets loaded to count the
dense run's steps). Each (learning rate, seed) is claimed in the results file's lock file before it trains, as a
sweep claims its runs (:class:`~lawn.harness.results.ResultsFile`), so studies sharing one results file split the
work and never train a row twice.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import lawn
from lawn import pruning
from lawn._checks import is_int, is_number
from lawn.harness.checked import run_config
from lawn.harness.config import COMPARE_KEYS, LOTTERY_FIELDS, RunConfig, load_mapping, parse_comparisons
from lawn.harness.datasets import load_data
from lawn.harness.optimizers import build_base_optimizer
from lawn.harness.results import ResultsFile, read_rows
from lawn.harness.same_run import ResumeMismatch, state_digest
from lawn.harness.schedule import build_scheduler
from lawn.harness.tasks import batch_starts, make_task
from lawn.harness.train import EpochEnd, Step, fit, fresh_model, resolve_device

ARMS = ("dense_extra", "ticket", "reinit", "finetune")  # the default one-shot arms
ONE_SHOT_ARMS = (*ARMS, "late_ticket", "random_mask", "lr_rewind", "finetune_dense")
IMP_ARMS = (
    "imp_ticket",
    "imp_finetune",
    "imp_late_ticket",
    "imp_lr_rewind",
    "imp_finetune_dense",
    "imp_reinit",
    "imp_random_mask",
)
IMP_CONTROLS = ("imp_reinit", "imp_random_mask")  # trained once per round on the imp_ticket chain's masks
FINETUNE_SCHEDULES = ("same", "constant")
PRUNE_LAYERS = ("inner", "all")
REINIT_SEED_OFFSET = 1000
RANDOM_MASK_SEED_OFFSET = 2000


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
    imp_arms: tuple[str, ...] = ("imp_ticket", "imp_finetune")
    late_rewind_steps: int = 0
    finetune_schedule: str = "same"
    prune_layers: str = "inner"
    imp_control_rounds: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LotterySpec:
        """The spec of ``data``; every problem found is reported at once, in one ``ValueError``."""
        if not isinstance(data, dict):
            raise TypeError(f"lottery spec: expected a mapping, got {type(data).__name__}")
        parse_comparisons(data, LOTTERY_FIELDS)  # [[compare]] tables are for `lawn report --spec`
        data = {k: v for k, v in data.items() if k not in COMPARE_KEYS}
        base = data.get("base", {})
        if not isinstance(base, dict):
            raise TypeError("lottery spec: 'base' must be a mapping of run config fields")
        problems: list[str] = []
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            problems.append(f"unknown key(s) {unknown}; known keys: {sorted(known)}")
        clash = sorted(set(base) & {"lr", "seed", "method"})
        if clash:
            problems.append(f"base sets {clash}; lr and seed are the study's axes, method is plain")
        fields: dict[str, Any] = {"base": {k: v for k, v in base.items() if k not in clash}}
        may_be_empty = ("arms", "imp_lrs", "imp_arms", "imp_control_rounds")
        for name in ("lrs", "seeds", "sparsities", "arms", "imp_lrs", "imp_arms", "imp_control_rounds"):
            if name in data:
                value = data[name]
                if not isinstance(value, (list, tuple)) or (not value and name not in may_be_empty):
                    problems.append(f"{name}: expected a non-empty list, got {value!r}")
                else:
                    fields[name] = tuple(value)
        for name in (
            "scope",
            "rewind_steps",
            "finetune_lr_scale",
            "correlation_top",
            "imp_rounds",
            "imp_rate",
            "late_rewind_steps",
            "finetune_schedule",
            "prune_layers",
        ):
            if name in data:
                fields[name] = data[name]
        spec = cls(**fields)
        problems += spec.problems()
        if problems:  # report the data-dependent ones too, all at once
            problems += spec._data_problems()
        _raise_all(problems)
        return spec

    def _data_problems(self) -> list[str]:
        lrs = dict.fromkeys((*self.lrs, *self.imp_lrs))
        try:
            configs = [self.config(lr, seed) for lr in lrs for seed in self.seeds]
        except (ValueError, TypeError):  # already reported
            return []
        return data_problems(self, list({c.key(): c for c in configs}.values()), torch.device("cpu"))

    @classmethod
    def load(cls, path: str | Path) -> LotterySpec:
        try:
            return cls.from_dict(load_mapping(path))
        except (ValueError, TypeError) as err:
            raise type(err)(f"{path}: {err}") from err

    def check(self) -> None:
        """Raise one ``ValueError`` listing every problem of the spec (see :meth:`problems`)."""
        _raise_all(self.problems())

    def problems(self) -> list[str]:
        """Every problem of the spec that needs no data: each field, and every run config it makes."""
        problems: list[str] = []

        def note(check: Any, *args: Any) -> None:
            try:
                check(*args)
            except (ValueError, TypeError) as err:
                problems.append(str(err))

        for s in self.sparsities:
            note(pruning.masks.check_sparsity, s, "sparsities")
            if s == 0:
                problems.append("sparsities: 0 prunes nothing (the dense arms cover it)")
        bad = [a for a in self.arms if a not in ONE_SHOT_ARMS]
        if bad:
            problems.append(f"arms: unknown {bad}; choose from {list(ONE_SHOT_ARMS)}")
        bad = [a for a in self.imp_arms if a not in IMP_ARMS]
        if bad:
            problems.append(f"imp_arms: unknown {bad}; choose from {list(IMP_ARMS)}")
        if any(a in IMP_CONTROLS for a in self.imp_arms) and "imp_ticket" not in self.imp_arms:
            problems.append(
                f"imp_arms: {[a for a in self.imp_arms if a in IMP_CONTROLS]} train on the imp_ticket chain's masks; "
                "add 'imp_ticket' to imp_arms"
            )
        late = [a for a in (*self.arms, *self.imp_arms) if a in ("late_ticket", "imp_late_ticket")]
        steps = self.late_rewind_steps
        if not is_int(steps) or steps < 0:
            problems.append(f"late_rewind_steps: expected an integer >= 0, got {steps!r}")
        elif late and steps == 0:
            problems.append(f"late_rewind_steps: arms {late} rewind to step k; set late_rewind_steps = k > 0")
        if self.finetune_schedule not in FINETUNE_SCHEDULES:
            problems.append(f"finetune_schedule: expected one of {FINETUNE_SCHEDULES}, got {self.finetune_schedule!r}")
        elif self.finetune_schedule == "same":
            for pair in (("lr_rewind", "finetune_dense"), ("imp_lr_rewind", "imp_finetune_dense")):
                if set(pair) <= {*self.arms, *self.imp_arms}:
                    problems.append(
                        f"arms: {list(pair)} are the same run when finetune_schedule = 'same' (both replay the "
                        "dense schedule at lr); set finetune_schedule = 'constant'"
                    )
        rounds = self.imp_control_rounds
        if any(not is_int(r) or not 1 <= r <= self.imp_rounds for r in rounds):
            problems.append(
                f"imp_control_rounds: expected rounds in 1 … imp_rounds = {self.imp_rounds}, got {list(rounds)!r}"
            )
        if self.prune_layers not in PRUNE_LAYERS:
            problems.append(
                f"prune_layers: expected one of {PRUNE_LAYERS} ('inner': all conv/linear weights but the first and "
                f"the last; 'all': every one), got {self.prune_layers!r}"
            )
        if self.scope not in pruning.masks.SCOPES:
            problems.append(f"scope: expected one of {pruning.masks.SCOPES}, got {self.scope!r}")
        if isinstance(self.rewind_steps, bool) or not isinstance(self.rewind_steps, int) or self.rewind_steps < 0:
            problems.append(f"rewind_steps: expected an integer >= 0, got {self.rewind_steps!r}")
        for name in ("finetune_lr_scale", "correlation_top"):
            value = getattr(self, name)
            if not is_number(value) or not 0 < value <= 1:
                problems.append(f"{name}: expected a number in (0, 1], got {value!r}")
        if isinstance(self.imp_rounds, bool) or not isinstance(self.imp_rounds, int) or self.imp_rounds < 1:
            problems.append(f"imp_rounds: expected an integer >= 1, got {self.imp_rounds!r}")
        note(pruning.masks.check_sparsity, self.imp_rate, "imp_rate")
        if self.imp_rate == 0:
            problems.append("imp_rate: 0 prunes nothing in any round; use a fraction in (0, 1), e.g. 0.2")
        if self.base.get("normalization", "bn") != "bn":
            problems.append("base: normalization must be 'bn' (the lottery's arms train the models as written)")
        for lr in dict.fromkeys((*self.lrs, *self.imp_lrs)):
            for seed in dict.fromkeys(self.seeds):
                note(self.config, lr, seed)  # every run config is valid
        return problems

    def config(self, lr: float, seed: int) -> RunConfig:
        return run_config({**self.base, "lr": lr, "seed": seed, "method": "plain"})

    def study_fields(self) -> dict[str, Any]:
        """What every row records of the study's settings; the later fields only when not at their default, so
        the keys of rows written before they existed stay valid."""
        fields: dict[str, Any] = {
            "scope": self.scope,
            "rewind_steps": self.rewind_steps,
            "finetune_lr_scale": self.finetune_lr_scale,
        }
        if self.late_rewind_steps:
            fields["late_rewind_steps"] = self.late_rewind_steps
        if self.finetune_schedule != "same":
            fields["finetune_schedule"] = self.finetune_schedule
        if self.prune_layers != "inner":
            fields["prune_layers"] = self.prune_layers
        return fields

    def prunable(self, model: torch.nn.Module) -> list[str]:
        """The weights this study prunes (``prune_layers``)."""
        return pruning.prunable_weights(model, "all" if self.prune_layers == "all" else None)

    def arm_lr(self, arm: str, lr: float) -> float:
        """An arm's learning rate: ``finetune_lr_scale × lr`` for ``finetune`` and ``dense_extra`` (and their
        IMP twin), ``lr`` for every other arm."""
        return lr * self.finetune_lr_scale if arm in ("dense_extra", "finetune", "imp_finetune") else lr

    def arm_schedule(self, arm: str) -> str:
        """``"constant"`` for the fine-tuning arms when ``finetune_schedule = "constant"``, else ``"same"`` (the
        run config's own schedule, replayed from its start: learning-rate rewinding for ``lr_rewind``)."""
        tuned = ("dense_extra", "finetune", "finetune_dense", "imp_finetune", "imp_finetune_dense")
        return self.finetune_schedule if arm in tuned else "same"


def row_key(config: RunConfig, lottery: dict[str, Any]) -> str:
    text = json.dumps({"run": config.key(), "lottery": lottery}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _train_arm(
    model: torch.nn.Module,
    task: Any,
    config: RunConfig,
    lr: float,
    *,
    snapshot_step: int | None = None,
    late_step: int | None = None,
    schedule: str = "same",
) -> dict[str, Any]:
    """Train ``model`` (masked or not) for ``config.epochs`` at ``lr`` with the config's optimizer and
    schedule (``schedule="constant"``: a constant ``lr``, no warm-up), on the harness's one loop (``train.fit``);
    batch order from ``config.seed``. Returns final metrics, each epoch's last batch loss, wall time and the
    states after ``snapshot_step`` and ``late_step`` steps."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    total = len(batch_starts(task.train_size, config.batch_size)) * config.epochs
    optimizer = build_base_optimizer(
        config.optimizer,
        model.parameters(),
        lr=lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
        fused=config.fused_base,
    )
    shape = config if schedule == "same" else config.replace(schedule="constant", warmup_fraction=0.0)
    scheduler = build_scheduler(optimizer, shape, total)
    wanted = {k for k in (snapshot_step, late_step) if k is not None}
    states = {0: copy.deepcopy(model.state_dict())} if 0 in wanted else {}
    train_losses: list[float] = []  # the last batch's loss of each epoch

    def after_step(step: Step) -> None:
        if step.number in wanted:
            states[step.number] = copy.deepcopy(model.state_dict())

    def end_epoch(end: EpochEnd) -> bool:
        train_losses.append(math.nan if end.last_loss is None else end.last_loss)
        return not math.isfinite(train_losses[-1])

    fitted = fit(
        model,
        optimizer,
        config.epochs,
        lambda: task.epoch(config.batch_size, generator),
        lambda inputs, targets, _: task.loss(model(inputs), targets),
        scheduler=scheduler,
        after_step=after_step,
        end_epoch=end_epoch,
    )
    model.eval()
    val, test = task.evaluate(model, "val"), task.evaluate(model, "test")
    missing = sorted(wanted - set(states))
    if missing:  # the spec check rules out a step past the end
        raise ValueError(f"rewind steps: the dense run diverged after {fitted.steps} steps, before step {missing}")
    return {
        "val_metric": None if fitted.stopped else val["metric"],
        "test_metric": None if fitted.stopped else test["metric"],
        "diverged": fitted.stopped,
        "train_losses": train_losses,
        "seconds": round(time.perf_counter() - started, 3),
        "snapshot": states.get(snapshot_step) if snapshot_step is not None else None,
        "late_snapshot": states.get(late_step) if late_step is not None else None,
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


def _raise_all(problems: list[str]) -> None:
    """One ``ValueError`` naming every problem (none: return)."""
    problems = list(dict.fromkeys(p if p.startswith("lottery spec") else f"lottery spec: {p}" for p in problems))
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        raise ValueError(f"{len(problems)} problems:\n" + "\n".join(f"- {p}" for p in problems))


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
        for arm in spec.imp_arms:
            for r in range(1, spec.imp_rounds + 1):
                if arm in IMP_CONTROLS and spec.imp_control_rounds and r not in spec.imp_control_rounds:
                    continue
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


@dataclass
class _Point:
    """One (learning rate, seed): its dense run's config and the rows it owes."""

    config: RunConfig
    wanted: list[dict[str, Any]]  # the dense row first, then the one-shot arms
    imp_rows: list[dict[str, Any]]
    keys: set[str]

    @property
    def dense_key(self) -> str:
        return row_key(self.config, self.wanted[0])


def _plan(spec: LotterySpec, dev: torch.device) -> list[_Point]:
    points: dict[str, _Point] = {}
    for seed in spec.seeds:
        for lr in sorted(set(spec.lrs) | set(spec.imp_lrs)):
            config = spec.config(lr, seed).replace(device=str(dev))
            wanted, imp_rows = _planned(spec, lr, config.epochs)
            point = _Point(config, wanted, imp_rows, {row_key(config, w) for w in wanted + imp_rows})
            points.setdefault(point.dense_key, point)
    return list(points.values())


def _data(config: RunConfig, cache: dict[str, Any]) -> Any:
    data_id = json.dumps({k: v for k, v in config.to_dict().items() if k in _DATA_FIELDS}, sort_keys=True)
    if data_id not in cache:
        cache[data_id] = load_data(config)
    return cache[data_id]


def data_problems(
    spec: LotterySpec, configs: list[RunConfig], dev: torch.device, cache: dict[str, Any] | None = None
) -> list[str]:
    """What only the data can tell, for every dense run, before anything trains: the run reaches
    ``rewind_steps``, the model builds and has weights to prune. Loads (and caches) the data sets."""
    cache = {} if cache is None else cache
    problems: list[str] = []
    for config in configs:
        where = f"lr {config.lr:g}, seed {config.seed}"
        try:
            data = _data(config, cache)
            task = make_task(data, dev, config.negatives_per_positive)
            spec.prunable(fresh_model(config, data, dev))
        except (ValueError, TypeError, KeyError, OSError) as err:
            problems.append(f"lottery spec: {where}: {err}")
            continue
        per_epoch = len(batch_starts(task.train_size, config.batch_size))
        total = per_epoch * config.epochs
        for name in ("rewind_steps", "late_rewind_steps"):
            steps = getattr(spec, name)
            if is_int(steps) and steps > total:
                problems.append(
                    f"lottery spec: {name}: {steps} is past the end of the dense run ({where}: "
                    f"{config.epochs} epoch(s) × {per_epoch} step(s) = {total} steps); use at most {total}"
                )
    return list(dict.fromkeys(problems))


def run_lottery(
    spec: LotterySpec,
    results: str | Path,
    *,
    device: str = "cpu",
    progress: bool = False,
    poll_s: float = 1.0,
    max_points: int | None = None,
) -> dict[str, int]:
    """Run every missing row of ``spec`` (see the module doc); returns counts ``done`` (rows written here),
    ``skipped`` (rows already there, or written by another study on the same file), ``total`` and ``points``
    (the (learning rate, seed) points this process trained rows for).

    ``max_points`` stops after that many points were trained here, so a sitting ends on a point boundary (a
    point's chains cannot resume on another machine mid-way, see :mod:`lawn.harness.same_run`).

    The spec is checked in full first (:meth:`LotterySpec.check` and the data-dependent checks), before any
    training. Each (learning rate, seed) is claimed in ``results``'s lock file before it trains; points that
    another process holds are waited for (polled every ``poll_s`` s) and taken over if it stops without
    writing their rows.
    """
    spec.check()
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points={max_points}: give a positive number of (learning rate, seed) points, or None")
    results = Path(results)
    dev = resolve_device(device)
    points = _plan(spec, dev)
    cache: dict[str, Any] = {}
    _raise_all(data_problems(spec, [p.config for p in points], dev, cache))
    book = ResultsFile(results)
    total = sum(len(p.keys) for p in points)
    done = trained = 0
    pending = deque(p for p in points if p.keys - book.written())
    elsewhere: list[_Point] = []
    bar = tqdm(
        total=len(points), initial=len(points) - len(pending), desc="lottery", disable=not progress, unit="lr×seed"
    )
    try:
        book.open()
        while (pending or elsewhere) and (max_points is None or trained < max_points):
            if not pending:
                time.sleep(poll_s)  # only points another process holds are left
                written = book.written()
                for point in list(elsewhere):
                    if not point.keys - written:
                        elsewhere.remove(point)
                        bar.update(1)
                    elif book.claim(point.dense_key):  # given up without its rows: take it over
                        book.release(point.dense_key)
                        elsewhere.remove(point)
                        pending.append(point)
                continue
            point = pending.popleft()
            if not book.claim(point.dense_key):
                elsewhere.append(point)
                continue
            try:
                present = book.written()
                todo = point.keys - present
                if todo:
                    data = _data(point.config, cache)
                    done += _run_point(spec, point, data, dev, todo, book, present)
                    trained += 1
            finally:
                book.release(point.dense_key)
            bar.update(1)
    finally:
        book.close()
        bar.close()
    return {"done": done, "skipped": total - done - _missing(points, book), "total": total, "points": trained}


def _missing(points: list[_Point], book: ResultsFile) -> int:
    """Rows of ``points`` not in ``book`` yet (left for a later run when ``max_points`` stopped this one)."""
    written = book.written()
    return sum(len(p.keys - written) for p in points)


def _run_point(
    spec: LotterySpec,
    point: _Point,
    data: Any,
    dev: torch.device,
    todo: set[str],
    book: ResultsFile,
    done_keys: set[str],
) -> int:
    """Train one (learning rate, seed), whose claim this process holds: the dense run (or its saved states),
    then every missing arm row."""
    config, wanted, imp_rows = point.config, point.wanted, point.imp_rows
    lr, results = config.lr, book.path
    task = make_task(data, dev, config.negatives_per_positive)
    written = 0

    def emit(lottery: dict[str, Any], fitted: dict[str, Any], **extra: Any) -> None:
        nonlocal written
        row = _row(config, task, lottery, fitted, **extra)
        if row["key"] not in done_keys:
            book.append(row)
            done_keys.add(row["key"])
            written += 1

    dense_key = point.dense_key
    states_path = results.with_name(results.name + ".states") / f"{dense_key}.pt"
    keys = point.keys
    before = {r["key"]: r for r in read_rows(results) if r.get("key") in keys} if results.exists() else {}
    where = f"lr {lr:g}, seed {config.seed}"
    model = fresh_model(config, data, dev)
    params = spec.prunable(model)
    late = spec.late_rewind_steps or None
    if states_path.is_file() and dense_key in done_keys:
        states = torch.load(states_path, map_location=dev, weights_only=True)
        _check_same(
            before.get(dense_key), state_digest(states["trained"]), None, f"{where}: the dense net", states_path
        )
    else:
        theta0 = copy.deepcopy(model.state_dict())
        fitted = _train_arm(model, task, config, lr, snapshot_step=spec.rewind_steps, late_step=late)
        states = {"initial": theta0, "rewind": fitted["snapshot"], "trained": copy.deepcopy(model.state_dict())}
        if late is not None:
            states["late"] = fitted["late_snapshot"]
        _check_same(before.get(dense_key), state_digest(model), fitted, f"{where}: the dense net", states_path)
        states_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(states, states_path)
        top = spec.correlation_top
        correlation = {
            "initial": pruning.weight_correlation(theta0, states["trained"], top, params),
            "rewind": pruning.weight_correlation(states["rewind"], states["trained"], top, params),
        }
        if late is not None:
            correlation["late"] = pruning.weight_correlation(states["late"], states["trained"], top, params)
        emit(wanted[0], fitted, correlation=correlation, weights_digest=state_digest(model))
    trained_model = fresh_model(config, data, dev)
    trained_model.load_state_dict(states["trained"])

    def train(model: torch.nn.Module, arm: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Train one arm's (masked) model; its fit and the row fields beside it: measured sparsity, the arm's
        lr and schedule, and the correlation of its start with its end over the survivors."""
        start = copy.deepcopy(model.state_dict())
        arm_lr, schedule = spec.arm_lr(arm, lr), spec.arm_schedule(arm)
        fitted = _train_arm(model, task, config, arm_lr, schedule=schedule)
        masks = pruning.current_masks(model)
        correlation = pruning.weight_correlation(
            start, model.state_dict(), spec.correlation_top, params, masks={k: masks[k] for k in params if k in masks}
        )
        extra = {
            "measured_sparsity": pruning.sparsity_report(model, params)["total"]["sparsity"],
            "arm_lr": arm_lr,
            "arm_schedule": schedule,
            "correlation": {"start": correlation},
            "weights_digest": state_digest(model),
        }
        return fitted, extra

    def start_arm(model: torch.nn.Module, arm: str, masks: dict[str, torch.Tensor], salt: int) -> None:
        """Put ``model`` (a copy of the trained net) at ``arm``'s start under ``masks`` (a magnitude mask)."""
        if arm in ("ticket", "imp_ticket"):
            pruning.rewind(model, states["rewind"], masks)
        elif arm in ("late_ticket", "imp_late_ticket"):
            pruning.rewind(model, states["late"], masks)
        elif arm in ("reinit", "imp_reinit"):
            reinit_model(model, masks, config, data, dev)
        elif arm in ("random_mask", "imp_random_mask"):
            seed = config.seed + RANDOM_MASK_SEED_OFFSET + salt
            pruning.rewind(model, states["rewind"], pruning.random_masks(masks, seed=seed))
        else:  # finetune, finetune_dense, lr_rewind: keep the trained survivors
            pruning.apply_masks(model, masks)

    for lottery in wanted[1:]:
        if row_key(config, lottery) not in todo:
            continue
        arm, s = lottery["arm"], lottery["sparsity"]
        model = copy.deepcopy(trained_model)
        if arm != "dense_extra":
            start_arm(model, arm, pruning.magnitude_masks(trained_model, s, spec.scope, params), 0)
        fitted, extra = train(model, arm)
        emit(lottery, fitted, **extra)

    def replayed(lottery: dict[str, Any], fitted: dict[str, Any], extra: dict[str, Any]) -> None:
        """A written chain round trained again (the next round's mask comes from it): it must be the same net."""
        what = f"{where}: {lottery['arm']} round {lottery['round']}"
        _check_same(before.get(row_key(config, lottery)), extra["weights_digest"], fitted, what, states_path)

    _run_imp(spec, config, imp_rows, todo, trained_model, states, params, train, start_arm, emit, replayed)
    return written


def _check_same(
    row: dict[str, Any] | None, digest: str, fitted: dict[str, Any] | None, what: str, states_path: Path
) -> None:
    """Raise :class:`ResumeMismatch` if ``row`` (a written row, or None) came from another net than the one whose
    ``state_digest`` is ``digest`` (rows without a digest: their validation and test metrics against ``fitted``)."""
    if row is None:
        return
    if "weights_digest" in row:
        if row["weights_digest"] == digest:
            return
        found = f"digest {digest}, the row has {row['weights_digest']}"
    else:
        if fitted is None or all(row[f"{s}_metric"] == fitted[f"{s}_metric"] for s in ("val", "test")):
            return
        found = "; ".join(
            f"{s} {row[f'{s}_metric']:.4f} in the row, {fitted[f'{s}_metric']:.4f} now" for s in ("val", "test")
        )
    raise ResumeMismatch(
        f"{what} was trained again on resume and is not the net its written row came from ({found}): training on "
        f"this machine does not reproduce the one that wrote it (or {states_path} changed). Restore the saved "
        "states of that machine, or delete this (lr, seed)'s rows from the results file to re-run it whole; the "
        "rows written before this point stay valid."
    )


def _run_imp(
    spec: LotterySpec,
    config: RunConfig,
    imp_rows: list[dict[str, Any]],
    todo: set[str],
    trained_model: torch.nn.Module,
    states: dict[str, Any],
    params: list[str],
    train: Any,
    start_arm: Any,
    emit: Any,
    replayed: Any,
) -> None:
    """The IMP rows: one chain per chain arm (round 0 is the dense run; each round prunes ``imp_rate`` of the
    survivors of the trained net, resets by the arm and trains ``E`` epochs), then the controls, each trained once
    per round on the ``imp_ticket`` chain's mask of that round."""
    resets = {"imp_ticket": "rewind", "imp_late_ticket": "rewind"}  # the others keep the trained survivors
    ticket_masks: dict[int, dict[str, torch.Tensor]] = {}
    controls = [a for a in spec.imp_arms if a in IMP_CONTROLS]
    need_ticket = any(row_key(config, w) in todo for w in imp_rows if w["arm"] in controls)
    for arm in [a for a in spec.imp_arms if a not in IMP_CONTROLS]:
        mine = [w for w in imp_rows if w["arm"] == arm]
        if not (any(row_key(config, w) in todo for w in mine) or (arm == "imp_ticket" and need_ticket)):
            continue
        model = copy.deepcopy(trained_model)  # round 0 (the dense run) is done: IMP starts by pruning θ_T
        calls = {"n": 0}

        def train_round(m: torch.nn.Module, arm: str = arm, calls: dict = calls) -> Any:
            calls["n"] += 1  # every round trains, written or not: the next round's mask is pruned from its weights
            return None if calls["n"] == 1 else train(m, arm)

        def on_round(record: dict[str, Any], mine: list = mine, arm: str = arm) -> None:
            r = record["round"]
            if r == 0:
                return
            if arm == "imp_ticket":
                ticket_masks[r] = record["masks"]
            if record["result"] is not None:
                fitted, extra = record["result"]
                if row_key(config, mine[r - 1]) in todo:
                    emit(mine[r - 1], fitted, **extra)
                else:
                    replayed(mine[r - 1], fitted, extra)

        initial = states["late"] if arm == "imp_late_ticket" else states["rewind"]
        pruning.iterative_magnitude_pruning(
            model,
            train_round,
            spec.imp_rounds,
            spec.imp_rate,
            initial_state=initial,
            reset=resets.get(arm, "continue"),
            scope=spec.scope,
            params=params,
            on_round=on_round,
        )
    for arm in controls:
        for lottery in [w for w in imp_rows if w["arm"] == arm]:
            if row_key(config, lottery) not in todo:
                continue
            model = copy.deepcopy(trained_model)
            start_arm(model, arm, ticket_masks[lottery["round"]], lottery["round"])
            fitted, extra = train(model, arm)
            emit(lottery, fitted, **extra)


def reinit_model(
    model: torch.nn.Module, masks: dict[str, torch.Tensor], config: RunConfig, data: Any, device: torch.device
) -> torch.nn.Module:
    """The ``reinit`` arm: ``masks`` on a fresh draw of the model's own initializer, i.e. the model built again
    as the harness builds it, under seed ``config.seed + REINIT_SEED_OFFSET`` (the global random state is kept)."""
    fresh = config.replace(seed=config.seed + REINIT_SEED_OFFSET)
    return pruning.reinitialize(model, masks, seed=fresh.seed, factory=lambda: fresh_model(fresh, data, device))


_DATA_FIELDS = ("dataset", "data_dir", "data_options", "train_limit", "test_limit", "val_fraction", "data_seed")
