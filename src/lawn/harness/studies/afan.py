"""The A-FAN study's tables and plot from the results files of docs/results/afan/run_study.sh.

    PYTHONPATH=src python -m lawn.harness.studies.afan docs/results/afan --measure-cost

Per arm: test accuracy and test accuracy under input noise N(0, 0.5²), mean ± std over seeds; and paired
(same seed) differences against compute-matched plain training and against the random-sign control.
``--measure-cost`` also times training steps of each arm's configuration in this process (CPU time,
``time.process_time``, one thread, batch 128; saved to ``cost.json`` in the folder and reused by later
reports), since the rows' wall-clock ``step_seconds`` depend on how busy the shared machine was.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

ARMS = [  # (file stem, label)
    ("plain", "plain, 5 epochs"),
    ("plain_matched", "plain, 20 epochs (A-FAN's compute)"),
    ("afan_aug", "A-FAN augmentation only (early split)"),
    ("afan_position", "A-FAN + position normalization (moment swap)"),
    ("afan_batch", "A-FAN + batch normalization (per-channel stats)"),
    ("afan_random", "random-sign control, same size (early split)"),
    ("afan_late", "A-FAN augmentation only, late split (stages.2)"),
]


def load(folder: Path) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for stem, _ in ARMS:
        path = folder / f"{stem}.jsonl"
        if path.is_file():
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            rows[stem] = sorted((json.loads(line) for line in lines), key=lambda r: r["config"]["seed"])
    return rows


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f} ({len(values)})"


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], field: str) -> str:
    by_seed = {r["config"]["seed"]: r[field] for r in b}
    diffs = [r[field] - by_seed[r["config"]["seed"]] for r in a if r["config"]["seed"] in by_seed]
    if not diffs:
        return "–"
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.4f} ± {std:.4f}"


def table(rows: dict[str, list[dict[str, Any]]], cost: dict[str, float] | None) -> str:
    head = "| arm | epochs | passes/step | wall s/step | test acc | noisy test acc (σ=0.5) |"
    lines = [head, "|---|---|---|---|---|---|"]
    for stem, label in ARMS:
        rs = rows.get(stem, [])
        if not rs:
            lines.append(f"| {label} | – | – | – | not run | not run |")
            continue
        wall = statistics.mean(r["timing"]["step_seconds"] for r in rs)
        passes = rs[0]["cost"]["passes_per_step"]
        lines.append(
            f"| {label} | {rs[0]['config']['epochs']} | {passes} | {wall:.2f} | "
            f"{mean_std([r['test_metric'] for r in rs])} | {mean_std([r['noisy_test_metric'] for r in rs])} |"
        )
    out = "\n".join(lines)
    refs = [("plain_matched", "plain, 20 epochs"), ("afan_random", "random control"), ("plain", "plain, 5 ep.")]
    head = "| arm | " + " | ".join(f"Δ test vs {name} | Δ noisy vs {name}" for _, name in refs) + " |"
    lines = ["", "", "Paired differences (same seed), mean ± std over seeds:", "", head]
    lines.append("|---|" + "---|---|" * len(refs))
    for stem, label in ARMS:
        if stem in ("plain", "plain_matched") or stem not in rows:
            continue
        cells = []
        for ref, _ in refs:
            if ref == stem or ref not in rows:
                cells += ["–", "–"]
            else:
                cells += [paired(rows[stem], rows[ref], f) for f in ("test_metric", "noisy_test_metric")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    out += "\n".join(lines)
    if cost:
        lines = ["", "", "CPU seconds per training step (one thread, batch 128, measured in one process):", ""]
        lines += ["| configuration | CPU s/step | × plain |", "|---|---|---|"]
        for name, seconds in cost.items():
            lines.append(f"| {name} | {seconds:.3f} | {seconds / cost['plain']:.2f} |")
        out += "\n".join(lines)
    return out + "\n"


def measure_cost(repeats: int = 5) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from lawn import AFAN
    from lawn.harness.models import ResNet
    from lawn.harness.train import fit

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ResNet((1, 28, 28), 10, 8)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    configs: dict[str, AFAN | None] = {
        "plain": None,
        "A-FAN, early split (stages.0), T=2": AFAN(model, "stages.0", steps=2, step_size=0.05),
        "A-FAN + position norm., early split": AFAN(model, "stages.0", steps=2, step_size=0.05, normalize="position"),
        "random-sign control, early split": AFAN(model, "stages.0", steps=2, step_size=0.05, direction="random"),
        "A-FAN, late split (stages.2), T=2": AFAN(model, "stages.2", steps=2, step_size=0.05),
    }
    out = {}
    for name, afan in configs.items():

        def loss(inputs: torch.Tensor, targets: torch.Tensor, step: int, afan: AFAN | None = afan) -> torch.Tensor:
            if afan is None:
                return F.cross_entropy(model(inputs), targets)
            return afan.loss(inputs, targets, F.cross_entropy)[0]

        fit(model, opt, 1, lambda: [(x, y)], loss)  # warm-up
        started = time.process_time()
        fit(model, opt, 1, lambda: [(x, y)] * repeats, loss)
        out[name] = (time.process_time() - started) / repeats
    return out


def plot(rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stems = [s for s, _ in ARMS if s in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    panels = [("test_metric", "test accuracy"), ("noisy_test_metric", "accuracy, input noise σ=0.5")]
    for ax, (field, title) in zip(axes, panels):
        for i, stem in enumerate(stems):
            values = [r[field] for r in rows[stem]]
            ax.bar(i, statistics.mean(values), color="C0" if stem.startswith("afan") else "C1", alpha=0.6)
            ax.scatter([i] * len(values), values, color="k", s=12, zorder=3)
        ax.set_xticks(range(len(stems)))
        ax.set_xticklabels(stems, rotation=30, ha="right")
        lo = min(r[field] for s in stems for r in rows[s])
        hi = max(r[field] for s in stems for r in rows[s])
        ax.set_ylim(lo - 0.03, hi + 0.02)
        ax.set_title(f"{title} (bars: mean, dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--measure-cost", action="store_true")
    args = parser.parse_args()
    rows = load(args.folder)
    cost_file = args.folder / "cost.json"  # measured once, reused by later reports
    if args.measure_cost:
        cost_file.write_text(json.dumps(measure_cost(), indent=1) + "\n")
    cost = json.loads(cost_file.read_text()) if cost_file.is_file() else None
    text = table(rows, cost)
    (args.folder / "report.md").write_text(text)
    plot(rows, args.folder / "accuracy.png")
    print(text)


if __name__ == "__main__":
    main()
