"""Tables and the mechanism plot of the study "LAWN as the paper runs it" (docs/results.md) from its result rows.

    python -m lawn.harness.studies.lawn_paper docs/results/lawn_paper
    python -m lawn.harness.studies.lawn_paper docs/results/lawn_paper_vgg

Reads every ``*.jsonl`` in the folder (the pilot's ``pilot*.jsonl`` apart);
selects each cell's learning rate on validation (lawn.harness.selection: mean over seeds of the last
epoch's validation accuracy) and prints markdown: test accuracy mean ± std, the final train loss (mean over the
chosen point's seeds), the switch step; the pilot's validation table; and writes ``mechanism.png``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from lawn.harness.selection import select

ARMS = [  # (label, method, rewarmup_fraction)
    ("plain", "plain", 0.0),
    ("wd", "wd", 0.0),
    ("LAWN tail, 3-phase", "lawn", 0.05),
    ("LAWN tail, 1 warm-up", "lawn", 0.0),
    ("LAWN all layers, 3-phase", "lawn_all", 0.05),
    ("LAWN all layers, 1 warm-up", "lawn_all", 0.0),
    ("LAWN tail, auto switch, 3-phase", "lawn_auto", 0.05),
]


def rows_of(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]


def arm_of(selection) -> str | None:
    s = selection.setting
    for label, method, rewarm in ARMS:  # plain and wd have no switch: the field does not apply to them
        if s["method"] == method and (method in ("plain", "wd") or float(s.get("rewarmup_fraction", 0.0)) == rewarm):
            return label
    return None


def main_table(rows: list[dict]) -> tuple[str, dict]:
    cells = {}
    for sel in select(rows):
        cells[(sel.setting["optimizer"], arm_of(sel), sel.setting["batch_size"])] = sel
    batches = sorted({k[2] for k in cells})
    lines = [
        "| optimizer | arm | " + " | ".join(f"batch {b}: test acc · train loss · lr" for b in batches) + " |",
        "|---|---|" + "---|" * len(batches),
    ]
    for opt in ("sgd", "adam", "lamb"):
        for label, _, _ in ARMS:
            if not any((opt, label, b) in cells for b in batches):
                continue
            parts = []
            for b in batches:
                sel = cells.get((opt, label, b))
                if sel is None:
                    parts.append("—")
                    continue
                loss = statistics.fmean(r["history"][-1]["train_loss"] or float("nan") for r in sel.rows)
                switch = [r.get("switch_step") for r in sel.rows if r.get("switch_step") is not None]
                extra = f" · switch {min(switch)}–{max(switch)}/{sel.rows[0]['total_steps']}" if switch else ""
                parts.append(
                    f"{sel.test_mean:.4f} ± {sel.test_std:.4f} ({sel.seeds}) · {loss:.1e} · {sel.chosen['lr']:g}{extra}"
                )
            lines.append(f"| {opt} | {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines), cells


def difference_table(cells: dict) -> str:
    """Each arm's test accuracy minus plain's (points), per optimizer and batch, and whether the difference is
    larger than the larger of the two seed stds ("noise" otherwise)."""
    batches = sorted({k[2] for k in cells})
    lines = [
        "| optimizer | arm | " + " | ".join(f"batch {b}: Δ vs plain (points)" for b in batches) + " |",
        "|---|---|" + "---|" * len(batches),
    ]
    for opt in ("sgd", "adam", "lamb"):
        for label, _, _ in ARMS[1:]:
            parts = []
            for b in batches:
                arm, plain = cells.get((opt, label, b)), cells.get((opt, "plain", b))
                if arm is None or plain is None:
                    parts.append("—")
                    continue
                delta = 100 * (arm.test_mean - plain.test_mean)
                noise = 100 * max(arm.test_std, plain.test_std)
                parts.append(f"{delta:+.2f} ({'beyond' if abs(delta) > noise else 'within'} ±{noise:.2f})")
            if any(p != "—" for p in parts):
                lines.append(f"| {opt} | {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def pilot_table(rows: list[dict]) -> str:
    lines = [
        "| optimizer | batch | method | value | val acc | test acc | switch step / total |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        rows,
        key=lambda r: (
            r["config"]["optimizer"],
            r["config"]["batch_size"],
            r["config"]["method"],
            r["config"]["free_fraction"],
            r["config"]["auto_threshold"],
        ),
    ):
        c = r["config"]
        auto = c["method"] == "lawn_auto"
        value = f"threshold {c['auto_threshold']:g}" if auto else f"free_fraction {c['free_fraction']:g}"
        lines.append(
            f"| {c['optimizer']} | {c['batch_size']} | {c['method']} | {value} | {r['val_metric']:.4f} | "
            f"{r['test_metric']:.4f} | {r['switch_step']} / {r['total_steps']} |"
        )
    return "\n".join(lines)


def mechanism_plot(cells: dict, out: Path, optimizer: str = "adam", batch: int | None = None) -> None:
    """Train loss, logit norm and tangential step over training for one cell (default: the smallest batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("train_loss", "train loss", True),
        ("logit_norm", "mean ‖logits‖ (test)", False),
        ("tangential_step", "tangential step ‖Δ_tan‖/‖W‖ (tail)", True),
    ]
    if batch is None:
        batch = min(k[2] for k in cells)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, _, _ in ARMS:
        sel = cells.get((optimizer, label, batch))
        if sel is None:
            continue
        for ax, (key, title, log) in zip(axes, panels):
            epochs = [h["epoch"] for h in sel.rows[0]["history"]]
            values = [
                statistics.fmean(r["history"][i][key] for r in sel.rows)
                if all(r["history"][i][key] is not None for r in sel.rows)
                else float("nan")
                for i in range(len(epochs))
            ]
            ax.plot(epochs, values, label=label)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
            if log:
                ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{optimizer}, batch {batch}: mean over seeds at the chosen learning rate", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(folder: str) -> None:
    root = Path(folder)
    study = [p for p in sorted(root.glob("*.jsonl")) if not p.name.startswith("pilot")]
    table, cells = main_table(rows_of(study))
    print(table)
    print()
    print(difference_table(cells))
    pilots = sorted(root.glob("pilot*.jsonl"))
    if pilots:
        print()
        print(pilot_table(list({r["key"]: r for r in rows_of(pilots)}.values())))
    mechanism_plot(cells, root / "mechanism.png")
    print(f"\nwrote {root / 'mechanism.png'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/lawn_paper")
