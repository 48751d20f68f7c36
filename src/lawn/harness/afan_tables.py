"""The A-FAN study's table and plot beyond the verdicts: accuracy per arm, clean, under noise and under blur.

    python -m lawn.harness.afan_tables ROWS.jsonl [--out TABLE.md] [--plot ACCURACY.png]

``ROWS`` are harness rows at the chosen grid points (the fresh seeds' file). One line per arm, mean ± sample std
over seeds of the clean test accuracy, the accuracy under Gaussian noise (``noisy_test_metric``) and under blur
(``blurred_test_metric``), the final training accuracy (the last history entry), the run's wall seconds
(``timing.seconds``) and wall seconds per training step (``timing.step_seconds``, evaluation excluded) with its
ratio to the shortest plain arm's; wall times reflect how busy the machine was, not only the method. The plot has
one panel per test metric: a dot per seed, a bar at the mean.

An arm is a method and its variant (``afan_bn``, ``afan_direction``, plain's ``epochs``); rows of one arm that
differ in anything but the seed (two grid points of one arm) are refused: the table would average different
settings.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from lawn.harness.grouping import group_one_setting
from lawn.harness.results import read_rows

METRICS = (
    ("test_metric", "clean test acc."),
    ("noisy_test_metric", "under noise"),
    ("blurred_test_metric", "under blur"),
)


def arm_name(config: dict[str, Any]) -> str:
    """A readable arm name from the fields that tell the arms of the A-FAN study apart."""
    method = config["method"]
    if method == "plain":
        return f"plain, {config['epochs']} epochs"
    if method == "input_adv":
        return "input-space PGD"
    if method == "afan" and config.get("afan_direction") == "random":
        return "random-direction noise"
    if method == "afan":
        name = "A-FAN, BN updated (as released)" if config.get("afan_bn") == "update" else "A-FAN, BN frozen"
        normalize = config.get("afan_normalize", "none")
        return name if normalize == "none" else f"{name}, {normalize} normalization"
    return method


def _setting(config: dict[str, Any]) -> str:
    """The tuned values a reader needs: the learning rate and, for the perturbing arms, the step size."""
    text = f"lr {config['lr']:g}"
    if config["method"] in ("afan", "input_adv"):
        text += f", step {config['afan_step_size']:.3g}"
    return text


def by_arm(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by arm, in first-seen order; refuses two settings within one arm."""
    return group_one_setting(rows, arm_name, ("seed",), str)


def _values(group: list[dict[str, Any]], key: str) -> list[float]:
    """The group's numbers for ``key`` (a row field, or the last history entry's ``train_accuracy``), if any."""
    if key == "train_accuracy":
        return [float(r["history"][-1][key]) for r in group if r.get("history") and key in r["history"][-1]]
    return [float(r[key]) for r in group if r.get(key) is not None]


def _mean_std(values: list[float]) -> str:
    """``mean ± std``, or ``–`` when no row of the arm has the number (a study without noise, a diverged run)."""
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def _step_seconds(group: list[dict[str, Any]]) -> float | None:
    steps = [float(r["timing"]["step_seconds"]) for r in group if r.get("timing", {}).get("step_seconds")]
    return statistics.fmean(steps) if steps else None


def table(rows: list[dict[str, Any]]) -> str:
    """Mean ± std over seeds per arm: clean, noisy and blurred test accuracy, final train accuracy; wall times."""
    if not rows:
        raise ValueError("no rows: pass the A-FAN study's fresh rows (lawn sweep --results)")
    groups = by_arm(rows)
    plain = [g for g in groups.values() if g[0]["config"]["method"] == "plain"]
    base = _step_seconds(min(plain, key=lambda g: g[0]["config"]["epochs"])) if plain else None
    lines = [
        "| arm | setting | seeds | "
        + " | ".join(label for _, label in METRICS)
        + " | final train acc. | wall s/run | wall s/step (× plain) |",
        "|---|---|---|" + "---|" * (len(METRICS) + 3),
    ]
    for arm, group in groups.items():
        cells = [_mean_std(_values(group, key)) for key, _ in METRICS]
        cells.append(_mean_std(_values(group, "train_accuracy")))
        seconds = [float(r["timing"]["seconds"]) for r in group if r.get("timing", {}).get("seconds") is not None]
        cells.append(f"{statistics.fmean(seconds):.0f}" if seconds else "–")
        step = _step_seconds(group)
        cells.append("–" if step is None else f"{step:.3f}" + (f" ({step / base:.2f}×)" if base else ""))
        setting = _setting(group[0]["config"])
        lines.append(f"| {arm} | {setting} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str | Path) -> None:
    """One panel per test metric: each arm's seeds as dots, its mean as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_arm(rows)
    metrics = [(key, label) for key, label in METRICS if _values(rows, key)]
    if not metrics:
        raise ValueError("no test accuracy in the rows to plot")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        for i, group in enumerate(groups.values()):
            values = _values(group, key)
            if not values:
                continue
            ax.bar(i, statistics.fmean(values), color="0.85", width=0.7)
            ax.scatter([i + 0.12 * (j - (len(values) - 1) / 2) for j in range(len(values))], values, s=12, zorder=3)
        low, high = min(_values(rows, key)), max(_values(rows, key))
        ax.set_ylim(low - 0.2 * (high - low + 1e-3), high + 0.2 * (high - low + 1e-3))
        ax.set_xticks(range(len(groups)), list(groups), rotation=35, ha="right", fontsize=8)
        ax.set_title(label)
        ax.set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--plot", help="write the plot to this PNG file")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.rows)
        text = table(rows)
        if args.plot:
            plot(rows, args.plot)
    except ValueError as error:
        parser.error(str(error))
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
