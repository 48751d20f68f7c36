"""The second unification study's accuracy–compression frontier: a table and a plot per net, from its rows.

    python -m lawn.harness.studies.unification_frontier ROWS.jsonl --out DIR [--title TEXT]

``ROWS`` are ``lawn.harness.studies.unification --spec`` rows (arm and level under ``row["unification"]``).
``DIR/frontier.md`` has one line per level and arm: test accuracy as mean ± sample std over seeds, the paired
difference to the dense arm of the same seed (mean and 95 % t-interval, ``Δ = acc(arm) − acc(dense)``, in points),
the validation accuracy right after hardening, the storage and multiply ratios of ``compression_report`` (×
dense fp32) and ADMM's last residual. ``DIR/frontier.png`` plots each arm's test accuracy against storage and
against multiplies (log x), mean with its 95 % t-interval over seeds, the dense arm as a band.

These are descriptions; the decisions are the declared comparisons' (``lawn report --spec``, ``verdicts.json``).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from lawn.harness.results import read_rows
from lawn.harness.verdicts import mean_and_half_width, paired_stats

ARM_ORDER = ("one_shot", "gradual", "admm")


def _cells(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """``(arm, level) → seed → row``; a repeated seed in a cell is refused (two studies mixed in one file)."""
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for row in rows:
        if row.get("experiment") != "unification" or "unification" not in row:
            raise ValueError(f"row {row.get('key')!r} is not a unification study row (no row['unification'])")
        fields = row["unification"]
        cell = cells.setdefault((fields["arm"], fields["level"]), {})
        seed = row["config"]["seed"]
        if seed in cell:
            raise ValueError(
                f"{fields['arm']} at {fields['level']!r}: seed {seed} appears twice; pass one study's rows "
                "(one spec's results file) at a time"
            )
        cell[seed] = row
    if ("dense", "none") not in cells:
        raise ValueError("no dense rows (arm 'dense', level 'none'): the frontier is relative to them")
    return cells


def _levels(cells: dict[tuple[str, str], dict[int, dict[str, Any]]]) -> list[str]:
    """Levels in the order of their storage ratio, largest (least compressed) first."""
    storage: dict[str, float] = {}
    for (arm, level), by_seed in cells.items():
        if arm in ARM_ORDER:
            storage.setdefault(level, next(iter(by_seed.values()))["bits_ratio"])
    return sorted(storage, key=lambda level: (-storage[level], level))


def table(rows: list[dict[str, Any]]) -> str:
    """The frontier as markdown (see the module docstring)."""
    cells = _cells(rows)
    dense = cells[("dense", "none")]
    head = (
        "| level | arm | seeds | test acc. (mean ± std) | Δ vs dense, points (95 % CI) | acc. at harden | "
        "storage (× fp32) | multiplies (× dense) | ADMM residual |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]

    def line(level: str, arm: str, by_seed: dict[int, dict[str, Any]]) -> str:
        acc = [r["test_metric"] for r in by_seed.values()]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        diffs = [100 * (r["test_metric"] - dense[s]["test_metric"]) for s, r in by_seed.items() if s in dense]
        stats = paired_stats(diffs)
        if arm == "dense" or stats["mean"] is None:
            delta = ""
        elif stats["ci_low"] is None:
            delta = f"{stats['mean']:+.2f}"
        else:
            delta = f"{stats['mean']:+.2f} ({stats['ci_low']:+.2f}, {stats['ci_high']:+.2f})"
        first = next(iter(by_seed.values()))
        harden = [r["acc_at_harden"] for r in by_seed.values() if "acc_at_harden" in r]
        residual = [r["residual"] for r in by_seed.values() if "residual" in r]
        return (
            f"| {level} | {arm} | {len(acc)} | {statistics.fmean(acc):.4f} ± {spread:.4f} | {delta} | "
            + (f"{statistics.fmean(harden):.4f}" if harden else "")
            + f" | {first['bits_ratio']:.3f} | {first['multiplies_ratio']:.3f} | "
            + (f"{statistics.fmean(residual):.3g}" if residual else "")
            + " |"
        )

    if ("pretrained", "none") in cells:
        lines.append(line("none", "pretrained", cells[("pretrained", "none")]))
    lines.append(line("none", "dense", dense))
    for level in _levels(cells):
        lines += [line(level, arm, cells[(arm, level)]) for arm in ARM_ORDER if (arm, level) in cells]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Test accuracy against storage and multiplies per arm, mean ± 95 % t-interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    cells = _cells(rows)
    levels = _levels(cells)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    shown = [r for (arm, _), cell in cells.items() if arm in ARM_ORDER for r in cell.values()]
    xs_all = {k: [r[k] for r in shown] for k in ("bits_ratio", "multiplies_ratio")}  # the plotted points' range
    dense_mean, dense_half = mean_and_half_width([r["test_metric"] for r in cells[("dense", "none")].values()])
    for ax, key, label in (
        (axes[0], "bits_ratio", "storage (× dense fp32), log"),
        (axes[1], "multiplies_ratio", "multiplications (× dense), log"),
    ):
        ax.axhspan(dense_mean - dense_half, dense_mean + dense_half, color="0.8", alpha=0.6, label="dense (95 % CI)")
        for i, arm in enumerate(ARM_ORDER):
            present = [lv for lv in levels if (arm, lv) in cells]
            if not present:
                continue
            nudge = 1 + 0.04 * (i - 1)  # arms share a level's x: spread them a little to keep all visible
            xs = [next(iter(cells[(arm, lv)].values()))[key] * nudge for lv in present]
            stats = [mean_and_half_width([r["test_metric"] for r in cells[(arm, lv)].values()]) for lv in present]
            ax.errorbar(
                xs, [m for m, _ in stats], yerr=[h for _, h in stats], fmt="os^"[i], color=f"C{i}", capsize=3,
                label=arm, alpha=0.85, linestyle="none",
            )  # fmt: skip
        ax.set_xscale("log")
        lo, hi = min(xs_all[key]) / 1.2, max(xs_all[key]) * 1.2
        ticks = [t for t in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0) if lo <= t <= hi]
        ax.xaxis.set_major_locator(FixedLocator(ticks))  # plain decimals: log minor labels overlap at this width
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (mean, 95 % CI over seeds)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Unification / pruning: accuracy against compression, per arm")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_unification_report(
    rows: list[dict[str, Any]], out: str | Path, sources: list[str] | None = None, title: str = ""
) -> list[Path]:
    """``report.md`` (the frontier table) and ``frontier.png`` in ``out``, for ``lawn report`` on unification rows;
    their paths, the markdown first. The verdicts section is added after, by ``lawn report --spec``."""
    text = table(rows)  # refuses rows that are not unification rows before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, out / "frontier.png", title)
    where = f"Results: {', '.join(f'`{s}`' for s in sources)} ({len(rows)} rows).\n\n" if sources else ""
    report = out / "report.md"
    report.write_text(
        "# Unification study report\n\n" + where + "Test accuracy per level and arm; Δ is paired by seed against "
        "the dense arm (a description: the decisions are the declared comparisons' verdicts below, when the "
        "spec is given).\n\n" + text + "\n![accuracy against compression](frontier.png)\n"
    )
    return [report, out / "frontier.png"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows")
    parser.add_argument("--out", required=True, help="directory for frontier.md and frontier.png")
    parser.add_argument("--title", default="", help="the plot's title")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.rows)
        text = table(rows)
    except (ValueError, KeyError) as error:
        parser.error(f"{args.rows}: {error}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, out / "frontier.png", args.title)
    (out / "frontier.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
