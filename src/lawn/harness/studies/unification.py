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

Tuning budget: one knob with two values per method, chosen on a validation split with a pilot seed that is not an
evaluation seed, at the middle setting (unify 0.5, prune 0.25): ADMM's initial ρ ∈ {0.01, 0.1}; one-shot's
fine-tune lr ∈ {1e-3, 3e-3}. Then 3 evaluation seeds; test accuracy mean ± std. Writes ``rows.jsonl``,
``summary.md`` and ``accuracy_vs_cost.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lawn import unification as U
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
