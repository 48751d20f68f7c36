"""Nested-network runs for the harness: one training per config, one result row per evaluated width.

    python -m lawn.harness.nested_runs SPEC --results FILE [--pilot PILOT_ROWS] [--jobs 2 --threads 1]

The model is a BN CNN, ``conv(c)-BN-ReLU-pool, conv(2c)-BN-ReLU-pool, fc(4c)-ReLU, fc`` with ``c = 2 · width``
(``width = 8``: 16, 32, 64 units as in the first study). ``nested_arm`` picks how it is trained (Adam, the
config's lr / schedule / epochs / batch size):

- ``"narrow"``: an ordinary CNN with ``nested_fraction`` of the units in every hidden layer (``1.0`` is plain
  training, no nesting; smaller fractions are the separately trained narrow networks, the ceiling);
- ``"dropout"``: fixed-rate nested dropout: the three hidden layers are ``NestedConv2d`` / ``NestedLinear`` with
  ``GROUPS = 8`` ordered groups of units (the first always kept, the norm inside), and a cut drawn per example
  from the stick-breaking distribution with every stick dropped at rate ``nested_rate``;
- ``"learned"``: the learned ordering (Bayesian nested networks): the same layers, the keep probabilities learned
  from the prior ``β = 1 − nested_rate``, loss ``CE + nested_kl_weight · Σ_layers KL(q(z) ‖ p(z))`` (weight 1 is
  the ELBO with one cut per example); the keep logits train at ``lr × nested_order_lr_scale`` (Adam moves a
  parameter by about its lr per step, so over ``T`` steps a logit moves at most ``≈ lr · T``).

The last ``HELD_OUT = 2`` classes of the data set are never trained on: their test images are the
out-of-distribution set (Fashion-MNIST: bag and ankle boot), the other classes' are the test set. After training,
a nested model is evaluated at every width of ``EVAL_WIDTHS`` (``g / 8`` of the units, ``g = 1 … 8``): its
BatchNorm statistics re-estimated at that width on 8 fixed training batches, then validation accuracy, test
accuracy, ECE, NLL and OOD AUROC (predictive entropy); a narrow network once, at its own width. Each evaluation is a
row: ``config.eval_width`` says the width (narrow: ``nested_fraction``), ``val_metric`` / ``test_metric`` are the
accuracies, and ``ece``, ``nll``, ``auroc`` sit beside them; the width-1 row of a nested model also holds the
MC-averaged predictions over sampled cuts (``mc``: 8 samples) and the wall time of a batch of 256 through the
sliced and the masked model at every width (``speed``). Every row carries the training ``history``: per epoch the
training loss, accuracy, ``kl`` and ``keep_probabilities`` (per nested layer, ``P(group j kept)``), to show
whether the learned ordering leaves its prior.

A spec is TOML: ``seeds``, ``base`` (run config fields), one ``[arms.NAME]`` table per arm with
``nested_arm``, ``tune`` (field → values: the arm's tuning grid, recorded as the rows' ``tuned``) and ``vary``
(field → values: settings of their own), and ``[[compare]]`` tables for ``lawn report --spec``. ``--pilot`` runs
each setting only at the grid point the pilot's rows chose: the best mean validation accuracy over all widths and
seeds of the pilot (one choice for all widths, as ``pilot_by = []`` makes ``lawn report --pilot`` choose).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lawn.harness.config import RunConfig, coerce_field, load_mapping
from lawn.harness.datasets import load_data
from lawn.harness.results import append_row, read_rows
from lawn.harness.schedule import build_scheduler, scaled_lr
from lawn.harness.tasks import batch_starts
from lawn.harness.train import EpochEnd, StepLoss, fit, in_memory_format
from lawn.nested import (
    NestedConv2d,
    NestedLinear,
    expected_calibration_error,
    mc_predict,
    nested_kl,
    nested_modules,
    nll,
    ood_auroc,
    recalibrate_batchnorm,
    set_width,
    slice_model,
)

GROUPS = 8
HELD_OUT = 2
EVAL_WIDTHS = tuple(g / GROUPS for g in range(1, GROUPS + 1))
ARMS = ("narrow", "dropout", "learned")
MC_SAMPLES = 8


def ordering_width(fraction: float) -> float:
    """The ordering's width ``p`` that keeps ``fraction`` of the units: ``F + ⌊D·p⌋ = fraction · G`` groups."""
    return (round(fraction * GROUPS) - 1) / (GROUPS - 1)


def check_nested(config: RunConfig) -> None:
    """A ``ValueError`` naming the field when the config is not a nested run this module can train."""
    if config.nested_arm not in ARMS:
        raise ValueError(f"nested_arm: expected one of {ARMS}, got {config.nested_arm!r}")
    if config.width % 4:
        raise ValueError(f"width: the nested CNN needs a multiple of 4 (units 2w, 4w, 8w in {GROUPS} groups)")
    if config.nested_arm == "narrow":
        if round(config.nested_fraction * GROUPS) != config.nested_fraction * GROUPS:
            raise ValueError(f"nested_fraction: a multiple of 1/{GROUPS} for narrow nets, got {config.nested_fraction}")
        if not math.isclose(config.eval_width, config.nested_fraction):
            raise ValueError("eval_width: a narrow net is evaluated at its own width; set it to nested_fraction")
    elif config.nested_fraction != 1.0:
        raise ValueError(f"nested_fraction: nested models train at full width, got {config.nested_fraction}")


def build_cnn(config: RunConfig, input_shape: tuple[int, ...], classes: int) -> nn.Sequential:
    """The CNN of ``config`` (module docstring) for ``C × H × W`` inputs."""
    check_nested(config)
    c, h, w = input_shape
    units = [
        int(2 * config.width * k * (config.nested_fraction if config.nested_arm == "narrow" else 1)) for k in (1, 2, 4)
    ]
    flat = units[1] * (h // 4) * (w // 4)
    if config.nested_arm == "narrow":
        conv1 = nn.Sequential(nn.Conv2d(c, units[0], 3, padding=1, bias=False), nn.BatchNorm2d(units[0]))
        conv2 = nn.Sequential(nn.Conv2d(units[0], units[1], 3, padding=1, bias=False), nn.BatchNorm2d(units[1]))
        fc1: nn.Module = nn.Linear(flat, units[2])
    else:
        kw = {
            "groups_of_units": GROUPS, "always_on": 1, "prior": 1.0 - config.nested_rate, "temperature": 0.5,
            "learn_ordering": config.nested_arm == "learned", "weight_noise": False,
        }  # fmt: skip
        conv1 = NestedConv2d(c, units[0], 3, padding=1, bias=False, norm=nn.BatchNorm2d(units[0]), **kw)
        conv2 = NestedConv2d(units[0], units[1], 3, padding=1, bias=False, norm=nn.BatchNorm2d(units[1]), **kw)
        fc1 = NestedLinear(flat, units[2], **kw)
    return nn.Sequential(conv1, nn.ReLU(), nn.MaxPool2d(2), conv2, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         fc1, nn.ReLU(), nn.Linear(units[2], classes))  # fmt: skip


@dataclass
class Splits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_ood: torch.Tensor
    classes: int


def nested_data(config: RunConfig) -> Splits:
    """The harness's splits of ``config.dataset`` with the last ``HELD_OUT`` classes removed from training,
    validation and test; their test images are the OOD set."""
    data = load_data(config)
    if data.x_train.dim() != 4:
        raise ValueError(
            f"dataset: the nested CNN reads images, {config.dataset!r} has shape {tuple(data.x_train.shape)}"
        )
    keep = data.num_classes - HELD_OUT

    def inside(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[y < keep], y[y < keep]

    return Splits(
        *inside(data.x_train, data.y_train), *inside(data.x_val, data.y_val), *inside(data.x_test, data.y_test),
        data.x_test[data.y_test >= keep], keep,
    )  # fmt: skip


def keep_probabilities(model: nn.Module) -> list[list[float]]:
    """``P(group j kept)`` of every nested layer (empty for a narrow net)."""
    with torch.no_grad():
        return [[round(p, 6) for p in m.ordering.keep_probabilities().tolist()] for m in nested_modules(model)]


@torch.no_grad()
def _probs(model: nn.Module, x: torch.Tensor, mc: bool = False) -> torch.Tensor:
    model.eval()
    chunks = x.split(1024)
    if mc:
        return torch.cat([mc_predict(model, chunk, samples=MC_SAMPLES) for chunk in chunks])
    return torch.cat([torch.softmax(model(chunk).double(), -1) for chunk in chunks])


def _metrics(model: nn.Module, s: Splits, mc: bool = False) -> dict[str, float]:
    probs, val = _probs(model, s.x_test, mc), _probs(model, s.x_val, mc)
    return {
        "val_metric": float((val.argmax(1) == s.y_val).double().mean()),
        "test_metric": float((probs.argmax(1) == s.y_test).double().mean()),
        "ece": expected_calibration_error(probs, s.y_test),
        "nll": nll(probs, s.y_test),
        "auroc": ood_auroc(probs, _probs(model, s.x_ood, mc)),
    }


def _recalibration(s: Splits, seed: int) -> list[torch.Tensor]:
    order = torch.randperm(len(s.y_train), generator=torch.Generator().manual_seed(seed))[: 8 * 256]
    return list(s.x_train[order].split(256))


def _speed(model: nn.Module, x: torch.Tensor, config: RunConfig, reps: int = 10) -> dict[str, dict[str, float]]:
    """Median wall ms of one eval forward of ``x`` through the sliced and the masked model at every width (the
    sliced copy in the run's memory format, so the two differ only in their widths)."""

    def timed(m: nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            m(x)
            times = []
            for _ in range(reps):
                started = time.perf_counter()
                m(x)
                times.append(time.perf_counter() - started)
        return 1e3 * statistics.median(times)

    out = {}
    for fraction in EVAL_WIDTHS:
        set_width(model, ordering_width(fraction))
        sliced = in_memory_format(slice_model(model, ordering_width(fraction), example_input=x), config)
        out[f"{fraction:g}"] = {"sliced_ms": timed(sliced), "masked_ms": timed(model)}
    return out


def train_nested(config: RunConfig, splits: Splits | None = None) -> list[dict[str, Any]]:
    """Train ``config`` and return its rows (one per evaluated width; module docstring)."""
    started = time.perf_counter()
    check_nested(config)
    s = nested_data(config) if splits is None else splits
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = in_memory_format(build_cnn(config, tuple(s.x_train.shape[1:]), s.classes), config)
    nested = config.nested_arm != "narrow"
    starts = batch_starts(len(s.y_train), config.batch_size)
    total_steps = len(starts) * config.epochs
    order = [p for n, p in model.named_parameters() if n.endswith("ordering.keep_logits")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("ordering.keep_logits")]
    groups = [{"params": rest}] + (
        [{"params": order, "lr": scaled_lr(config) * config.nested_order_lr_scale}] if order else []
    )
    optimizer = torch.optim.Adam(groups, lr=scaled_lr(config), fused=config.fused_base or None)
    scheduler = build_scheduler(optimizer, config, total_steps)

    def record(epoch: int, loss: float | None, accuracy: float | None, kl: float | None) -> dict[str, Any]:
        return {"epoch": epoch, "train_loss": loss, "train_accuracy": accuracy, "kl": kl,
                "keep_probabilities": keep_probabilities(model)}  # fmt: skip

    history = [record(0, None, None, None)]
    counts = {"correct": 0.0, "kl": 0.0}

    def batches() -> Any:
        if nested:
            set_width(model, None)  # a width sampled per example again, after the last epoch's evaluation
        counts.update(correct=0.0, kl=0.0)
        perm = torch.randperm(len(s.y_train), generator=generator)
        return ((s.x_train[idx], s.y_train[idx]) for idx in (perm[a : a + config.batch_size] for a in starts))

    def loss(inputs: torch.Tensor, targets: torch.Tensor, _steps: int) -> torch.Tensor | StepLoss:
        logits = model(inputs)
        data_loss = F.cross_entropy(logits, targets)
        counts["correct"] += float((logits.argmax(1) == targets).sum())
        if config.nested_arm != "learned":
            return data_loss
        kl = nested_kl(model, "ordering")
        counts["kl"] += float(kl.detach())
        return StepLoss(data_loss + config.nested_kl_weight * kl, data_loss)

    def end_epoch(end: EpochEnd) -> bool:
        kl = counts["kl"] / max(1, end.steps) if nested else None
        history.append(record(end.epoch, end.mean_loss, counts["correct"] / max(1, end.examples), kl))
        return not math.isfinite(end.mean_loss)

    fitted = fit(model, optimizer, config.epochs, batches, loss, scheduler=scheduler, end_epoch=end_epoch)
    diverged = not math.isfinite(history[-1]["train_loss"])
    train_seconds = fitted.seconds

    common = {
        "metric": "accuracy", "diverged": diverged, "epochs_run": len(history) - 1,
        "steps_per_epoch": len(starts), "total_steps": total_steps, "history": history,
        "timing": {"train_seconds": round(train_seconds, 3),
                   "step_seconds": round(train_seconds / max(1, total_steps), 6)},
        "versions": {"torch": torch.__version__}, "run_key": config.key(),
    }  # fmt: skip
    widths = EVAL_WIDTHS if nested else (config.nested_fraction,)
    rows = []
    for fraction in widths:
        if nested:
            set_width(model, ordering_width(fraction))
        recalibrate_batchnorm(model, _recalibration(s, config.seed))
        metrics = _metrics(model, s)
        if diverged:
            metrics = {k: None for k in metrics}
        row_config = config.replace(eval_width=fraction)
        row = {"key": row_config.key(), "config": row_config.to_dict(), **common, **metrics}
        if nested and fraction == 1.0 and not diverged:
            set_width(model, None)
            recalibrate_batchnorm(model, _recalibration(s, config.seed))
            row["mc"] = {k: v for k, v in _metrics(model, s, mc=True).items()}
            row["speed"] = _speed(model, s.x_test[:256], config)
        rows.append(row)
    for row in rows:
        row["timing"] = {**row["timing"], "seconds": round(time.perf_counter() - started, 3)}
    return rows


# ---------------------------------------------------------------------- specs and the runner
@dataclass(frozen=True)
class NestedSpec:
    """A nested study's grid: ``seeds × arms × (arm's vary) × (arm's tune)``."""

    base: dict[str, Any]
    seeds: tuple[int, ...]
    arms: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path) -> NestedSpec:
        data = load_mapping(path)
        unknown = sorted(set(data) - {"base", "seeds", "arms", "compare", "bounds"})
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; known: base, seeds, arms, compare, bounds")
        arms = data.get("arms")
        if not isinstance(arms, dict) or not arms:
            raise ValueError(f"{path}: arms: expected one [arms.NAME] table per arm")
        for name, arm in arms.items():
            extra = sorted(set(arm) - {"nested_arm", "tune", "vary"})
            if extra or "nested_arm" not in arm:
                raise ValueError(f"{path}: arms.{name}: needs nested_arm, may have tune and vary; got {sorted(arm)}")
            for part in ("tune", "vary"):
                for field_name, values in arm.get(part, {}).items():
                    if not isinstance(values, list) or not values:
                        raise ValueError(f"{path}: arms.{name}.{part}.{field_name}: expected a non-empty list")
                    for v in values:
                        coerce_field(field_name, v)
        seeds = data.get("seeds", [0])
        spec = cls(dict(data.get("base", {})), tuple(int(s) for s in seeds), dict(arms))
        for config, _ in spec.expand():
            check_nested(config)
        return spec

    def expand(self) -> list[tuple[RunConfig, list[str]]]:
        runs = []
        for seed in self.seeds:
            for arm in self.arms.values():
                tune, vary = arm.get("tune", {}), arm.get("vary", {})
                for v in itertools.product(*vary.values()):
                    for t in itertools.product(*tune.values()):
                        fields = {**self.base, "nested_arm": arm["nested_arm"], "seed": seed}
                        fields.update(zip(vary, v))
                        fields.update(zip(tune, t))
                        if arm["nested_arm"] == "narrow":
                            fields["eval_width"] = fields.get("nested_fraction", 1.0)
                        runs.append((RunConfig.from_dict(fields), list(tune)))
        return runs


def _setting(config: RunConfig, tuned: list[str]) -> str:
    skip = {"seed", "device", "eval_width", "nested_fraction", *tuned}  # narrow nets: one choice for every width
    return json.dumps({k: v for k, v in config.to_dict().items() if k not in skip}, sort_keys=True, default=str)


def pilot_selected(
    runs: list[tuple[RunConfig, list[str]]], pilot: list[dict[str, Any]]
) -> list[tuple[RunConfig, list[str]]]:
    """``runs`` restricted, per setting, to the tuned point with the best mean pilot validation accuracy (every
    width and seed pooled); an error naming the setting when the pilot did not cover its grid."""
    chosen = []
    for config, tuned in runs:
        key = _setting(config, tuned)
        scores: dict[str, list[float]] = {}
        for row in pilot:
            c = RunConfig.from_dict(row["config"])
            if _setting(c, tuned) == key:
                point = json.dumps([getattr(c, t) for t in tuned])
                scores.setdefault(point, []).append(0.0 if row.get("diverged") else float(row["val_metric"]))
        grid = {json.dumps([getattr(c, t) for t in tuned]) for c, tu in runs if _setting(c, tu) == key}
        if not grid <= set(scores):
            raise ValueError(
                f"pilot: {config.nested_arm} ({', '.join(tuned)}): the pilot covered {len(scores)} of the grid's "
                f"{len(grid)} points; finish the pilot first"
            )
        best = sorted(scores, key=lambda p: (-statistics.fmean(scores[p]), p))[0]
        if json.dumps([getattr(config, t) for t in tuned]) == best:
            chosen.append((config, tuned))
    return chosen


def _work(job: tuple[dict[str, Any], list[str], int]) -> list[dict[str, Any]]:
    fields, tuned, threads = job
    torch.set_num_threads(threads)
    return [{**row, "tuned": tuned} for row in train_nested(RunConfig.from_dict(fields))]


def run_spec(
    spec: NestedSpec, results: str | Path, pilot: list[dict[str, Any]] | None = None, jobs: int = 1, threads: int = 1
) -> int:
    """Train every run of ``spec`` (at the pilot's choice with ``pilot``) whose rows are not yet in ``results``;
    rows are appended as each run finishes. Returns the number of runs trained."""
    runs = spec.expand()
    if pilot:
        runs = pilot_selected(runs, pilot)
    done = {row.get("run_key") for row in read_rows(results)} if Path(results).is_file() else set()
    todo = [(c.to_dict(), tuned, threads) for c, tuned in runs if c.key() not in done]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already in {results}, {len(todo)} to train", flush=True)
    if jobs <= 1:
        outputs = map(_work, todo)
    else:
        pool = multiprocessing.get_context("spawn").Pool(jobs)
        outputs = pool.imap_unordered(_work, todo)
    for i, rows in enumerate(outputs, 1):
        for row in rows:
            append_row(results, row)
        c = rows[0]["config"]
        print(
            f"[{i}/{len(todo)}] {c['nested_arm']} seed {c['seed']}: width-1 test {rows[-1]['test_metric']}", flush=True
        )
    if jobs > 1:
        pool.close()
        pool.join()
    return len(todo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--results", required=True)
    parser.add_argument("--pilot", help="rows of the pilot: run each setting only at the point they chose")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    args = parser.parse_args(argv)
    spec = NestedSpec.load(args.spec)
    pilot = read_rows(args.pilot) if args.pilot else None
    if args.dry_run:
        runs = pilot_selected(spec.expand(), pilot) if pilot else spec.expand()
        for config, tuned in runs:
            print(
                config.nested_arm,
                config.seed,
                {t: getattr(config, t) for t in tuned},
                f"fraction {config.nested_fraction}",
            )
        print(f"{len(runs)} runs")
        return 0
    run_spec(spec, args.results, pilot, args.jobs, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
