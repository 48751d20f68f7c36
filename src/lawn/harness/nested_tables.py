"""The nested study's tables beyond the verdicts: metrics per arm and width, MC averaging, sliced vs masked speed.

    python -m lawn.harness.nested_tables ROWS.jsonl [--out TABLES.md]

``ROWS`` are ``lawn.harness.nested_runs`` rows at the chosen grid points (the fresh seeds). Three tables:

- per arm and evaluated width: test accuracy, ECE, NLL and OOD AUROC as mean ± sample std over seeds
  (``narrow`` at ``nested_fraction = 1`` is named "plain"; the other narrow nets are "narrow", one per width);
- the width-1 rows of the nested arms: the deterministic prediction against the MC average over sampled cuts
  (``mc``), each mean ± std over seeds;
- wall time of a batch of 256 through the sliced and the masked nested model at every width (``speed``), mean over
  the runs that measured it, and ``masked / sliced``.

A run's arm, width and seed come from its config; rows that differ in anything else within one arm and width (two
grid points of one arm) are refused: the table would average different settings.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from lawn.harness.grouping import group_one_setting
from lawn.harness.results import read_rows

METRICS = (("test_metric", "test acc."), ("ece", "ECE"), ("nll", "NLL"), ("auroc", "OOD AUROC"))
_RUN_FIELDS = ("seed", "eval_width", "nested_fraction")


def arm_name(config: dict[str, Any]) -> str:
    """``plain`` for the unnested full-width net, otherwise the config's ``nested_arm``."""
    arm = config["nested_arm"]
    return "plain" if arm == "narrow" and config["nested_fraction"] == 1.0 else arm


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def _by_arm_and_width(rows: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    return group_one_setting(
        rows,
        lambda config: (arm_name(config), float(config["eval_width"])),
        _RUN_FIELDS,
        lambda cell: f"{cell[0]} at width {cell[1]:g}",
    )


def metrics_table(rows: list[dict[str, Any]]) -> str:
    """Mean ± std over seeds of each metric, one line per arm and width."""
    lines = [
        "| arm | width | seeds | " + " | ".join(label for _, label in METRICS) + " |",
        "|---|---|---|" + "---|" * 4,
    ]
    for (arm, width), group in sorted(_by_arm_and_width(rows).items()):
        cells = [_mean_std([float(r[key]) for r in group]) for key, _ in METRICS]
        lines.append(f"| {arm} | {width:g} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mc_table(rows: list[dict[str, Any]]) -> str:
    """Deterministic vs MC-averaged predictions of the nested arms at full width."""
    lines = [
        "| arm | prediction | seeds | " + " | ".join(label for _, label in METRICS) + " |",
        "|---|---|---|" + "---|" * 4,
    ]
    for (arm, _), group in sorted(_by_arm_and_width(rows).items()):
        with_mc = [r for r in group if "mc" in r]
        if not with_mc:
            continue
        for name, source in (("deterministic", lambda r: r), ("MC average", lambda r: r["mc"])):
            cells = [_mean_std([float(source(r)[key]) for r in with_mc]) for key, _ in METRICS]
            lines.append(f"| {arm} | {name} | {len(with_mc)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def speed_table(rows: list[dict[str, Any]]) -> str:
    """Milliseconds per batch of 256, sliced vs masked, per width (mean over runs)."""
    timings: dict[float, list[tuple[float, float]]] = {}
    for row in rows:
        for width, t in row.get("speed", {}).items():
            timings.setdefault(float(width), []).append((t["sliced_ms"], t["masked_ms"]))
    lines = ["| width | runs | sliced ms | masked ms | masked / sliced |", "|---|---|---|---|---|"]
    for width, pairs in sorted(timings.items()):
        sliced = statistics.fmean(s for s, _ in pairs)
        masked = statistics.fmean(m for _, m in pairs)
        lines.append(f"| {width:g} | {len(pairs)} | {sliced:.1f} | {masked:.1f} | {masked / sliced:.2f} |")
    return "\n".join(lines) + "\n"


def tables(rows: list[dict[str, Any]]) -> str:
    """All three tables as one markdown text."""
    if not rows:
        raise ValueError("no rows: pass the nested study's fresh rows (lawn.harness.nested_runs --results)")
    return (
        "### Metrics per arm and width (mean ± std over seeds)\n\n"
        + metrics_table(rows)
        + "\n### Full width: deterministic vs MC-averaged predictions\n\n"
        + mc_table(rows)
        + "\n### Sliced vs masked model, wall time per batch of 256\n\n"
        + speed_table(rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    try:
        text = tables(read_rows(args.rows))
    except ValueError as error:
        parser.error(str(error))
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
