"""Study: micro-structured weight unification and pruning with ADMM vs one-shot projection (MNIST-1D, CPU).

    PYTHONPATH=src nice -n 5 python -m lawn.harness.studies.unification --out docs/results/unification

Protocol (every arm sees the same data, seeds and total epochs):

- a dense CNN (4 conv1d/linear layers, BN) is pre-trained for ``PRE`` epochs with Adam (lr 3e-3), one per seed,
  and shared by every arm of that seed;
- **dense**: ``MID + FT`` more epochs (lr 3e-3, then 1e-3 for the last ``FT``);
- **one-shot**: project + harden right after pre-training, fine-tune ``MID + FT`` epochs at its tuned lr (no ADMM);
- **one-shot-stepped** (added after the first run, ``--arms one-shot-stepped --append``): the same, with the lr
  schedule of the dense and ADMM arms (3e-3 for ``MID`` epochs, then 1e-3 for ``FT``), untuned;
- **ADMM**: ``MID`` epochs with the ADMM penalty (Z/U step every half epoch, ρ × 1.2 each time), harden, fine-tune
  ``FT`` epochs at lr 1e-3;
- each compressed arm at two levels of prune only, unify only, and both (6 settings).

The second study (``--spec docs/sweeps/unification_v2/*.toml --results ROWS``; full Fashion-MNIST, the harness's
``lenet300`` and ``lenet5``, levels to ≥ 90 % compressed blocks, a gradual-projection arm, every arm at one
learning-rate schedule) is described at :class:`UnificationSpec` and above :func:`run_spec`.

Tuning budget: one knob with two values per method, chosen on a validation split with a pilot seed that is not an
evaluation seed, at the middle setting (unify 0.5, prune 0.25): ADMM's initial ρ ∈ {0.01, 0.1}; one-shot's
fine-tune lr ∈ {1e-3, 3e-3}. Then 3 evaluation seeds; test accuracy mean ± std. Writes ``rows.jsonl``,
``summary.md`` and ``accuracy_vs_cost.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lawn
from lawn import unification as U
from lawn._checks import is_int, is_number
from lawn.harness.config import COMPARE_KEYS, UNIFICATION_FIELDS, RunConfig, parse_comparisons
from lawn.harness.same_run import ResumeMismatch, state_digest
from lawn.harness.tasks import batch_starts
from lawn.harness.train import StepLoss, fit

PRE, MID, FT = 10, 10, 5
BATCH, LR, FT_LR = 128, 3e-3, 1e-3
SETTINGS = {  # name: (unify, prune)
    "prune 0.5": (0.0, 0.5),
    "prune 0.8": (0.0, 0.8),
    "unify 0.5": (0.5, 0.0),
    "unify 0.9": (0.9, 0.0),
    "unify 0.5 + prune 0.25": (0.5, 0.25),
    "unify 0.4 + prune 0.5": (0.4, 0.5),
}
PILOT_SETTING = "unify 0.5 + prune 0.25"
RHO_GRID, FT_LR_GRID = (0.01, 0.1), (1e-3, 3e-3)
PILOT_SEED, SEEDS = 100, (0, 1, 2)
SPEC = U.BlockSpec(4)


def load_data(num_samples: int = 5000) -> dict[str, torch.Tensor]:
    """MNIST-1D (make_dataset, 5000 signals of length 40): 3600 train / 400 validation / 1000 test."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, 42
    state = np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(state)
    x, y = torch.tensor(raw["x"], dtype=torch.float32).unsqueeze(1), torch.tensor(raw["y"], dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(7))
    val, train = order[: len(y) // 10], order[len(y) // 10 :]
    return {
        "x_train": x[train],
        "y_train": y[train],
        "x_val": x[val],
        "y_val": y[val],
        "x_test": torch.tensor(raw["x_test"], dtype=torch.float32).unsqueeze(1),
        "y_test": torch.tensor(raw["y_test"], dtype=torch.int64),
    }


def make_model() -> nn.Module:
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv1d(cin, cout, 5, stride, 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 32, 1), *block(32, 32, 2), *block(32, 32, 2), nn.Flatten(), nn.Linear(320, 10))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    return acc


def train(model: nn.Module, data: dict, epochs: int, lr: float, seed: int, admm: U.ADMM | None = None) -> None:
    """Adam on the harness's loop (``train.fit``), batch order from ``seed``; with ``admm``, its penalty is
    trained on and its Z/U step runs after every optimizer step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x, y = data["x_train"], data["y_train"]

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((x[idx], y[idx]) for idx in torch.randperm(len(y), generator=gen).split(BATCH))

    def loss(inputs: torch.Tensor, targets: torch.Tensor, step: int) -> StepLoss:
        data_loss = nn.functional.cross_entropy(model(inputs), targets)
        return StepLoss(data_loss if admm is None else data_loss + admm.penalty(), data_loss)

    fit(model, opt, epochs, batches, loss, after_step=None if admm is None else lambda step: admm.update())


def costs(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    report = U.compression_report(model, example)
    return {
        "bits": report.bits,
        "bits_ratio": report.bits / report.dense_fp32_bits,
        "multiplies": report.multiplies,
        "multiplies_ratio": report.multiplies / report.dense_multiplies,
    }


def dense_costs(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    probe = copy.deepcopy(model)
    U.harden(probe, SPEC, unify=0.0, prune=0.0)  # all blocks dense: the fp32 reference with the same kind map
    report = U.compression_report(probe, example)
    return {
        "bits": report.dense_fp32_bits,
        "bits_ratio": 1.0,
        "multiplies": report.dense_multiplies,
        "multiplies_ratio": 1.0,
    }


def steps_per_epoch(data: dict) -> int:
    return -(-len(data["y_train"]) // BATCH)


def run_arm(arm: str, setting: str | None, pre: nn.Module, data: dict, seed: int, knob: float, split: str) -> dict:
    """One arm from the shared pre-trained model; returns a row (accuracy on ``split``, costs, diagnostics)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(pre)
    example = data["x_test"][:1]
    row: dict = {"arm": arm, "setting": setting, "seed": seed, "split": split, "knob": knob}
    t0 = time.process_time()
    if arm == "dense":
        train(model, data, MID, LR, seed + 1)
        train(model, data, FT, FT_LR, seed + 2)
        row.update(dense_costs(model, example))
    elif arm == "one-shot":
        unify, prune = SETTINGS[setting]
        U.harden(model, SPEC, unify=unify, prune=prune)
        row["acc_at_harden"] = accuracy(model, data[f"x_{split}"], data[f"y_{split}"])
        train(model, data, MID + FT, knob, seed + 1)
        row.update(costs(model, example))
    elif arm == "one-shot-stepped":  # the same lr schedule as dense and ADMM: 3e-3 for MID, then 1e-3 for FT
        unify, prune = SETTINGS[setting]
        U.harden(model, SPEC, unify=unify, prune=prune)
        row["acc_at_harden"] = accuracy(model, data[f"x_{split}"], data[f"y_{split}"])
        train(model, data, MID, LR, seed + 1)
        train(model, data, FT, FT_LR, seed + 2)
        row.update(costs(model, example))
    elif arm == "admm":
        unify, prune = SETTINGS[setting]
        admm = U.ADMM(
            model, SPEC, unify=unify, prune=prune, rho=knob, update_every=steps_per_epoch(data) // 2, rho_growth=1.2
        )
        train(model, data, MID, LR, seed + 1, admm)
        row["residual"] = admm.residual()
        admm.harden()
        row["acc_at_harden"] = accuracy(model, data[f"x_{split}"], data[f"y_{split}"])
        train(model, data, FT, FT_LR, seed + 2)
        row.update(costs(model, example))
    row["accuracy"] = accuracy(model, data[f"x_{split}"], data[f"y_{split}"])
    row["cpu_s"] = round(time.process_time() - t0, 2)
    return row


def pretrain(data: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = make_model()
    train(model, data, PRE, LR, seed)
    return model


def summarize(rows: list[dict], knobs: dict[str, float]) -> str:
    test = [r for r in rows if r["split"] == "test"]
    groups: dict[tuple, list[dict]] = {}
    for r in test:
        groups.setdefault((r["arm"], r["setting"]), []).append(r)
    dense = [r["accuracy"] for r in groups[("dense", None)]]
    lines = [
        f"Pilot (seed {PILOT_SEED}, validation, {PILOT_SETTING}): ADMM ρ0 = {knobs['admm']}, "
        f"one-shot fine-tune lr = {knobs['one-shot']}.",
        "",
        "| setting | arm | test accuracy | Δ vs dense (points) | accuracy at harden | storage (× fp32) | "
        "multiplies (× dense) | ADMM residual | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(values: list[float]) -> str:
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"

    lines.append(f"| none | dense | {ms(dense)} | 0 | | 1.000 | 1.000 | | {len(dense)} |")
    present = [a for a in ("one-shot", "one-shot-stepped", "admm") if any(k[0] == a for k in groups)]
    for setting in SETTINGS:
        for arm in present:
            g = groups[(arm, setting)]
            acc = [r["accuracy"] for r in g]
            delta = 100 * (statistics.mean(acc) - statistics.mean(dense))
            residual = f"{statistics.mean(r['residual'] for r in g):.3f}" if arm == "admm" else ""
            lines.append(
                f"| {setting} | {arm} | {ms(acc)} | {delta:+.2f} | {ms([r['acc_at_harden'] for r in g])} | "
                f"{g[0]['bits_ratio']:.3f} | {g[0]['multiplies_ratio']:.3f} | {residual} | {len(g)} |"
            )
    for control in [a for a in present if a != "admm"]:
        lines += [
            "",
            f"ADMM − {control}, paired by seed (same pre-trained model), test accuracy points:",
            "",
            "| setting | mean ± std | per seed |",
            "|---|---|---|",
        ]
        for setting in SETTINGS:
            by_seed = {r["seed"]: r["accuracy"] for r in groups[(control, setting)]}
            diffs = [100 * (r["accuracy"] - by_seed[r["seed"]]) for r in groups[("admm", setting)]]
            spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            lines.append(
                f"| {setting} | {statistics.mean(diffs):+.2f} ± {spread:.2f} | "
                f"{', '.join(f'{d:+.1f}' for d in diffs)} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = [r for r in rows if r["split"] == "test"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    markers = {"dense": "*", "one-shot": "o", "one-shot-stepped": "^", "admm": "s"}
    for ax, key, label in (
        (axes[0], "bits_ratio", "storage (× dense fp32)"),
        (axes[1], "multiplies_ratio", "multiplications (× dense)"),
    ):
        for arm in [a for a in markers if any(r["arm"] == a for r in test)]:
            settings = [None] if arm == "dense" else list(SETTINGS)
            xs, ys, es = [], [], []
            for s in settings:
                acc = [r["accuracy"] for r in test if r["arm"] == arm and r["setting"] == s]
                xs.append(next(r[key] for r in test if r["arm"] == arm and r["setting"] == s))
                ys.append(statistics.mean(acc))
                es.append(statistics.stdev(acc) if len(acc) > 1 else 0)
            ax.errorbar(xs, ys, yerr=es, fmt=markers[arm], label=arm, capsize=3)
            if arm == "admm":  # one set of labels; the other arms sit at the same x
                for x, y, s in zip(xs, ys, settings, strict=True):
                    ax.annotate(s, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (mean ± std, 3 seeds)")
    axes[0].legend()
    fig.suptitle("MNIST-1D CNN: unification / pruning, ADMM vs one-shot projection")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def pilot_knobs(rows: list[dict]) -> dict[str, float]:
    """The knob each method's pilot chose (the best validation accuracy; the first on a tie)."""
    pilot = [r for r in rows if r["split"] == "val"]
    return {
        arm: max((r for r in pilot if r["arm"] == arm), key=lambda r: r["accuracy"])["knob"]
        for arm in ("admm", "one-shot")
    }


def main(argv: list[str] | None = None) -> int:
    global PRE, MID, FT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/unification"))
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument("--smoke", action="store_true", help="1 epoch a phase, 600 signals (numbers mean nothing)")
    parser.add_argument(
        "--arms", default="dense,one-shot,admm", help="comma list of dense, one-shot, one-shot-stepped, admm"
    )
    parser.add_argument("--append", action="store_true", help="add the rows to an existing rows.jsonl")
    parser.add_argument("--report-only", action="store_true", help="rewrite summary.md and the plot from rows.jsonl")
    parser.add_argument("--spec", type=Path, help="the second study: a spec (TOML/JSON); rows go to --results")
    parser.add_argument("--results", type=Path, help="with --spec: the JSONL file of rows (resumable)")
    parser.add_argument(
        "--check", action="store_true", help="with --spec: check the spec, print its plan, train nothing"
    )
    args = parser.parse_args(argv)
    if args.spec is not None:
        spec = UnificationSpec.load(args.spec)
        per_seed = len(spec.planned())
        print(f"{args.spec}: {len(spec.seeds)} seeds × {per_seed} rows ({len(spec.levels)} levels, arms {spec.arms})")
        if args.check:
            return 0
        if args.results is None:
            parser.error("--spec needs --results FILE")
        torch.set_num_threads(1)
        try:
            print(json.dumps(run_spec(spec, args.results)))
        except ResumeMismatch as error:  # the message names the seed and what to do
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    if args.report_only:
        rows = [json.loads(line) for line in (args.out / "rows.jsonl").read_text().splitlines()]
        knobs = pilot_knobs(rows)
        summary = summarize(rows, knobs)
        cpu = sum(r["cpu_s"] for r in rows)
        (args.out / "summary.md").write_text(
            summary + f"\n\nCPU time of the arms: {cpu / 60:.1f} min (1 thread; pre-training and data not included).\n"
        )
        plot(rows, args.out / "accuracy_vs_cost.png")
        print(summary)
        return 0
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_data(600 if args.smoke else 5000)
    if args.smoke:
        PRE, MID, FT = 1, 1, 1
    rows: list[dict] = []
    start = time.process_time()

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    arms = args.arms.split(",")
    unknown = set(arms) - {"dense", "one-shot", "one-shot-stepped", "admm"}
    if unknown:
        parser.error(f"--arms: unknown {sorted(unknown)}")
    # pilot: one knob, two values per method, validation split, a seed not used below
    pre = pretrain(data, PILOT_SEED) if {"admm", "one-shot"} & set(arms) else None
    knobs = {"one-shot-stepped": LR}
    for arm, grid in (("admm", RHO_GRID), ("one-shot", FT_LR_GRID)):
        if arm not in arms:
            continue
        scores = []
        for value in grid:
            record(row := run_arm(arm, PILOT_SETTING, pre, data, PILOT_SEED, value, "val"))
            scores.append(row["accuracy"])
        knobs[arm] = grid[int(np.argmax(scores))]
    for seed in SEEDS[: args.seeds]:
        pre = pretrain(data, seed)
        if "dense" in arms:
            record(run_arm("dense", None, pre, data, seed, LR, "test"))
        for setting in SETTINGS:
            for arm in ("one-shot", "one-shot-stepped", "admm"):
                if arm in arms:
                    record(run_arm(arm, setting, pre, data, seed, knobs[arm], "test"))
    with open(args.out / "rows.jsonl", "a" if args.append else "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    if args.append:
        rows = [json.loads(line) for line in (args.out / "rows.jsonl").read_text().splitlines()]
        knobs = pilot_knobs(rows)
    summary = summarize(rows, knobs)
    total = time.process_time() - start
    (args.out / "summary.md").write_text(summary + f"\n\nTotal CPU time: {total / 60:.1f} min (1 thread).\n")
    plot(rows, args.out / "accuracy_vs_cost.png")
    print(summary)
    print(f"total CPU {total / 60:.1f} min")
    return 0


# ---------------------------------------------------------------------- the second study (--spec)
# Second study (``--spec SPEC --results ROWS``): the harness's data and models (full Fashion-MNIST; ``lenet300``,
# ``lenet5``), compression levels up to ≥ 90 % pruned or unified blocks, and a gradual-projection arm.
#
# Per seed the dense net is pre-trained for ``pre_epochs`` (to convergence, at ``pre_lr`` with the base config's
# schedule, e.g. cosine to 0; its state is saved beside the rows, so a
# resumed study does not retrain it), then every arm trains ``mid_epochs + ft_epochs`` more from it, all with the
# same optimizer and learning rates (``lr`` for the middle phase, ``ft_lr`` for fine-tuning, each constant):
#
# - ``dense``: no compression;
# - ``one_shot``: project + harden at once, then train ``mid + ft`` epochs;
# - ``gradual``: ``gradual_stages`` projections ``W ← Π_{f·i/S}(W)`` (fractions growing linearly to the level), each
#   followed by ``mid / S`` epochs of training (the kinds are not frozen between stages), then harden + fine-tune;
# - ``admm``: ``mid`` epochs with the ADMM penalty (``admm_updates_per_epoch`` Z/U steps an epoch, ρ × ``rho_growth``
#   each), harden, fine-tune ``ft`` epochs.
#
# Each row records test and validation accuracy, accuracy right after hardening, the storage and multiply ratios of
# ``compression_report`` (vs the dense fp32 net) and, under ``unification``, the arm and level for ``lawn report``.

ARMS_V2 = ("dense", "one_shot", "gradual", "admm")


@dataclass(frozen=True)
class Level:
    name: str
    unify: float
    prune: float


@dataclass(frozen=True)
class UnificationSpec:
    """A unification study: ``base`` run config fields (data, model, optimizer, batch size), axes and phases."""

    base: dict[str, Any]
    levels: tuple[Level, ...]
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    arms: tuple[str, ...] = ARMS_V2
    pre_epochs: int = 20
    mid_epochs: int = 10
    ft_epochs: int = 5
    lr: float = 1e-3
    ft_lr: float = 3e-4
    pre_lr: float | None = None  # the pre-training's peak learning rate (None: lr)
    block_size: int = 4
    gradual_stages: int = 5
    rho: float = 0.01
    rho_growth: float = 1.2
    admm_updates_per_epoch: int = 2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnificationSpec:
        """The spec of ``data`` (its ``[[compare]]`` / ``bounds`` are checked here, decided by ``lawn report``);
        every problem is reported at once, in one ``ValueError``."""
        if not isinstance(data, dict):
            raise TypeError(f"unification spec: expected a mapping, got {type(data).__name__}")
        parse_comparisons(data, UNIFICATION_FIELDS)
        data = {k: v for k, v in data.items() if k not in COMPARE_KEYS}
        problems: list[str] = []
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            problems.append(f"unknown key(s) {unknown}; known keys: {sorted(known)}")
        if "levels" not in data:
            problems.append('levels: required, e.g. [{name = "prune 0.9", unify = 0.0, prune = 0.9}]')
        base = data.get("base", {})
        if not isinstance(base, dict):
            problems.append("base: expected a table of run config fields")
            base = {}
        clash = sorted(set(base) & {"lr", "seed", "method", "epochs"})
        if clash:
            problems.append(f"base sets {clash}; seeds, lr, ft_lr and the phases' epochs are the spec's own keys")
        levels: list[Level] = []
        for i, level in enumerate(data.get("levels", [])):
            if not isinstance(level, dict) or set(level) != {"name", "unify", "prune"}:
                problems.append(f"levels[{i}]: expected {{name, unify, prune}}, got {level!r}")
                continue
            try:
                U.blocks.check_fractions(level["unify"], level["prune"])
            except (ValueError, TypeError) as err:
                problems.append(f"levels[{i}] ({level['name']!r}): {err}")
                continue
            levels.append(Level(str(level["name"]), float(level["unify"]), float(level["prune"])))
        if len({lv.name for lv in levels}) != len(levels):
            problems.append("levels: names repeat; give each level its own name")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known - {"base", "levels"}}
        spec = cls(base={k: v for k, v in base.items() if k not in clash}, levels=tuple(levels), **fields)
        problems += spec.problems()
        if problems:
            msg = "\n".join(f"- {p}" for p in dict.fromkeys(problems))
            raise ValueError(f"unification spec: {len(problems)} problem(s):\n{msg}")
        return spec

    @classmethod
    def load(cls, path: str | Path) -> UnificationSpec:
        from lawn.harness.config import load_mapping

        try:
            return cls.from_dict(load_mapping(path))
        except (ValueError, TypeError) as err:
            raise type(err)(f"{path}: {err}") from err

    def problems(self) -> list[str]:
        """Every problem that needs no data."""
        problems = []
        bad = [a for a in self.arms if a not in ARMS_V2]
        if bad or not self.arms:
            problems.append(f"arms: unknown {bad}; choose from {list(ARMS_V2)}")
        for name in ("pre_epochs", "mid_epochs", "ft_epochs", "block_size", "gradual_stages", "admm_updates_per_epoch"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                problems.append(f"{name}: expected an integer >= 1, got {value!r}")
        stages = self.gradual_stages
        if isinstance(self.mid_epochs, int) and isinstance(stages, int) and stages >= 1 and self.mid_epochs % stages:
            problems.append(
                f"gradual_stages: {stages} does not divide mid_epochs = {self.mid_epochs}; every "
                "stage trains the same number of whole epochs (e.g. gradual_stages = 5 with mid_epochs = 10)"
            )
        for name in ("lr", "ft_lr", "rho", "pre_lr"):
            value = getattr(self, name)
            if name == "pre_lr" and value is None:
                continue
            if not is_number(value) or not 0 < value < float("inf"):
                problems.append(f"{name}: expected a positive number, got {value!r}")
        if isinstance(self.rho_growth, bool) or not isinstance(self.rho_growth, (int, float)) or self.rho_growth < 1:
            problems.append(f"rho_growth: expected a number >= 1, got {self.rho_growth!r}")
        if not self.seeds or any(not is_int(x) or x < 0 for x in self.seeds):
            problems.append(f"seeds: expected a non-empty list of integers >= 0, got {list(self.seeds)!r}")
        try:
            self.config(0)
        except (ValueError, TypeError) as err:
            problems.append(f"base: {err}")
        return problems

    def config(self, seed: int) -> RunConfig:
        """The run config of a seed: ``base`` with ``lr``, the seed, and the total epochs of every arm."""
        from lawn.harness.checked import run_config

        epochs = self.pre_epochs + self.mid_epochs + self.ft_epochs
        return run_config({**self.base, "lr": self.lr, "seed": seed, "method": "plain", "epochs": epochs})

    def study_fields(self) -> dict[str, Any]:
        return {
            "pre_epochs": self.pre_epochs,
            "mid_epochs": self.mid_epochs,
            "ft_epochs": self.ft_epochs,
            "ft_lr": self.ft_lr,
            "block_size": self.block_size,
            **({} if self.pre_lr is None else {"pre_lr": self.pre_lr}),
        }

    def planned(self) -> list[dict[str, Any]]:
        """The ``unification`` fields of every row of a seed: the pre-trained dense net, then arm × level."""
        study = self.study_fields()
        rows = [{**study, "arm": "pretrained", "level": "none", "unify": 0.0, "prune": 0.0, "arm_epochs": 0}]
        arm_epochs = self.mid_epochs + self.ft_epochs
        for arm in self.arms:
            for level in [Level("none", 0.0, 0.0)] if arm == "dense" else self.levels:
                extra = {}
                if arm == "gradual":
                    extra["gradual_stages"] = self.gradual_stages
                if arm == "admm":
                    extra.update(
                        rho=self.rho, rho_growth=self.rho_growth, admm_updates_per_epoch=self.admm_updates_per_epoch
                    )
                rows.append(
                    {
                        **study,
                        "arm": arm,
                        "level": level.name,
                        "unify": level.unify,
                        "prune": level.prune,
                        "arm_epochs": arm_epochs,
                        **extra,
                    }
                )
        return rows


def check_same_pretrained(rows: list[dict[str, Any]], pre: nn.Module, task: Any, seed: int, states: Path) -> None:
    """Refuse to add rows to a seed whose written rows came from another pre-trained net.

    A seed whose saved state (``states``) is gone is trained again, and on another CPU that may give another net
    (:mod:`lawn.harness.same_run`); mixing the two would break the pairing of that seed's arms. Rows carry
    ``pretrained_digest``; rows written before it existed are checked through the seed's ``pretrained`` row (its
    validation and test metrics on ``task``, exactly).
    """
    digests = {r["pretrained_digest"] for r in rows if "pretrained_digest" in r}
    mine = state_digest(pre)
    if digests and digests != {mine}:
        found = f"digest {mine}, rows have {', '.join(sorted(digests))}"
    else:
        old = [r for r in rows if "pretrained_digest" not in r and r["unification"]["arm"] == "pretrained"]
        now = {split: _metric(task, pre, split) for split in ("val", "test")} if old else {}
        mismatch = [
            (split, r[f"{split}_metric"], now[split])
            for r in old
            for split in now
            if now[split] != r[f"{split}_metric"]
        ]
        if not mismatch:
            return
        found = "; ".join(f"{split} {was:.4f} in the rows, {got:.4f} now" for split, was, got in mismatch)
    raise ResumeMismatch(
        f"seed {seed}: its {len(rows)} written row(s) came from another pre-trained net than the one in hand "
        f"({found}); its saved state {states} is missing or changed and re-training it on this machine gave another "
        f"net. Restore {states}, or delete the seed's rows from the results file (their 'config.seed' is {seed}) "
        "to re-run the whole seed from one net. No row of this seed was written."
    )


def unification_row_key(config: RunConfig, fields: dict[str, Any]) -> str:
    text = json.dumps({"run": config.key(), "unification": fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _fit_phase(
    model: nn.Module,
    task: Any,
    config: RunConfig,
    epochs: int,
    lr: float,
    seed: int,
    admm: U.ADMM | None = None,
    scheduled: bool = False,
) -> None:
    """``epochs`` at a constant ``lr`` (``scheduled``: the config's schedule, e.g. cosine to 0) with the config's
    optimizer on the harness's loop; batch order from ``seed``; with ``admm``, its penalty joins the loss and its
    Z/U step follows every optimizer step."""
    from lawn.harness.optimizers import build_base_optimizer
    from lawn.harness.schedule import build_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_base_optimizer(
        config.optimizer,
        params,
        lr=lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
        fused=config.fused_base,
    )
    generator = torch.Generator().manual_seed(seed)

    def loss(inputs: torch.Tensor, targets: torch.Tensor, step: int) -> StepLoss:
        data_loss = task.loss(model(inputs), targets)
        return StepLoss(data_loss if admm is None else data_loss + admm.penalty(), data_loss)

    total = len(batch_starts(task.train_size, config.batch_size)) * epochs
    model.train()
    fit(
        model,
        optimizer,
        epochs,
        lambda: task.epoch(config.batch_size, generator),
        loss,
        scheduler=build_scheduler(optimizer, config, total) if scheduled else None,
        after_step=None if admm is None else lambda step: admm.update(),
    )


def _costs(model: nn.Module, example: torch.Tensor, spec: U.BlockSpec) -> dict[str, float]:
    """Storage and multiplies vs the dense fp32 net (``compression_report``); a dense net is the reference itself
    (ratios 1: it needs no block-kind map)."""
    if not list(U.hardened_layers(model)):
        probe = copy.deepcopy(model)
        U.harden(probe, spec, unify=0.0, prune=0.0)  # the same layers counted, all blocks dense
        report = U.compression_report(probe, example)
        return {
            "bits": report.dense_fp32_bits,
            "bits_ratio": 1.0,
            "multiplies": report.dense_multiplies,
            "multiplies_ratio": 1.0,
        }
    return costs(model, example)


def _metric(task: Any, model: nn.Module, split: str) -> float:
    model.eval()
    value = task.evaluate(model, split)["metric"]
    model.train()
    return float(value)


def run_arm_v2(spec: UnificationSpec, fields: dict[str, Any], pre: nn.Module, task: Any, config: RunConfig) -> dict:
    """Train one arm from the pre-trained net; the row's measurements (see the section docstring)."""
    blocks = U.BlockSpec(spec.block_size)
    arm, unify, prune = fields["arm"], fields["unify"], fields["prune"]
    model = copy.deepcopy(pre)
    seed = config.seed
    out: dict[str, Any] = {}
    if arm == "one_shot":
        U.harden(model, blocks, unify=unify, prune=prune)
        out["acc_at_harden"] = _metric(task, model, "val")
        _fit_phase(model, task, config, spec.mid_epochs, spec.lr, seed + 1)
    elif arm == "gradual":
        per_stage = spec.mid_epochs // spec.gradual_stages
        targets, _ = U.selection.select_weights(model, blocks)
        for stage in range(1, spec.gradual_stages + 1):
            fraction = stage / spec.gradual_stages
            with torch.no_grad():
                for _, module in targets:
                    projected, _ = U.project(module.weight, blocks, unify=unify * fraction, prune=prune * fraction)
                    module.weight.copy_(projected)
            _fit_phase(model, task, config, per_stage, spec.lr, seed + 1 + stage)
        U.harden(model, blocks, unify=unify, prune=prune)
        out["acc_at_harden"] = _metric(task, model, "val")
    elif arm == "admm":
        steps = len(batch_starts(task.train_size, config.batch_size))
        admm = U.ADMM(
            model,
            blocks,
            unify=unify,
            prune=prune,
            rho=spec.rho,
            update_every=max(1, steps // spec.admm_updates_per_epoch),
            rho_growth=spec.rho_growth,
        )
        _fit_phase(model, task, config, spec.mid_epochs, spec.lr, seed + 1, admm)
        out["residual"] = admm.residual()
        admm.harden()
        out["acc_at_harden"] = _metric(task, model, "val")
    else:  # dense
        _fit_phase(model, task, config, spec.mid_epochs, spec.lr, seed + 1)
    _fit_phase(model, task, config, spec.ft_epochs, spec.ft_lr, seed + 100)
    example = next(iter(task.epoch(2, torch.Generator().manual_seed(0))))[0][:1]
    out.update(_costs(model, example, blocks))
    out["val_metric"], out["test_metric"] = _metric(task, model, "val"), _metric(task, model, "test")
    return out


def run_spec(spec: UnificationSpec, results: str | Path, device: str = "cpu") -> dict[str, int]:
    """Every missing row of ``spec`` into ``results`` (JSONL, resumable by key). Each seed is claimed in the results
    file's lock file before it trains, so processes started on one file split the seeds (the driver's ``--jobs``)."""
    from lawn.harness.datasets import load_data
    from lawn.harness.results import ResultsFile, read_rows
    from lawn.harness.tasks import make_task
    from lawn.harness.train import fresh_model, resolve_device

    results = Path(results)
    dev = resolve_device(device)
    book = ResultsFile(results)
    done = total = 0
    data = None
    with book:
        for seed in spec.seeds:
            config = spec.config(seed).replace(device=str(dev))
            planned = spec.planned()
            keys = [unification_row_key(config, f) for f in planned]
            total += len(keys)
            if not set(keys) - book.written() or not book.claim(keys[0]):
                continue
            try:
                data = load_data(config) if data is None else data
                task = make_task(data, dev, config.negatives_per_positive)
                states = results.with_name(results.name + ".states") / f"{keys[0]}.pt"
                pre = fresh_model(config, data, dev)
                started = time.perf_counter()
                if states.is_file():
                    pre.load_state_dict(torch.load(states, map_location=dev, weights_only=True))
                else:
                    pre_lr = spec.lr if spec.pre_lr is None else spec.pre_lr
                    _fit_phase(pre, task, config, spec.pre_epochs, pre_lr, seed, scheduled=True)
                written = [r for r in read_rows(results) if r.get("key") in set(keys)] if results.exists() else []
                if written:
                    check_same_pretrained(written, pre, task, seed, states)
                if not states.is_file():
                    states.parent.mkdir(parents=True, exist_ok=True)
                    torch.save(pre.state_dict(), states)
                digest = state_digest(pre)
                for fields, key in zip(planned, keys, strict=True):
                    if key in book.written():
                        continue
                    if fields["arm"] == "pretrained":
                        example = next(iter(task.epoch(2, torch.Generator().manual_seed(0))))[0][:1]
                        measured = {
                            **_costs(pre, example, U.BlockSpec(spec.block_size)),
                            "val_metric": _metric(task, pre, "val"),
                            "test_metric": _metric(task, pre, "test"),
                        }
                    else:
                        started = time.perf_counter()
                        measured = run_arm_v2(spec, fields, pre, task, config)
                    book.append(
                        {
                            "key": key,
                            "experiment": "unification",
                            "config": config.to_dict(),
                            "tuned": [],
                            "metric": task.metric,
                            "diverged": False,
                            "unification": fields,
                            **measured,
                            "pretrained_digest": digest,
                            "versions": {"lawn": lawn.__version__, "torch": torch.__version__},
                            "timing": {"seconds": round(time.perf_counter() - started, 3), "device": str(dev)},
                        }
                    )
                    done += 1
            finally:
                book.release(keys[0])
    return {"done": done, "total": total}


if __name__ == "__main__":
    raise SystemExit(main())
