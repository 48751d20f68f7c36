"""IMP curves of a lottery study (rows of ``lawn lottery`` with ``imp_*`` arms): test accuracy against the
fraction of the weights remaining, per learning rate and arm, with 95 % bands over seeds; the start-vs-end weight
correlation of every chain on the same axis; and, from the study's ``verdicts.json``, the sparsest ticket that
matches dense and Liu et al.'s reading (:func:`correlation_reading`).

Each point is the mean over the seeds of one (lr, arm, round) with its 95 % t-interval,
``mean ± t(0.975, n − 1) · s / √n`` (no band with one seed). The fraction remaining is ``1 − sparsity`` of the
pruned layers; the x axis is logarithmic and runs from dense (1) to the sparsest round, as in Frankle & Carbin.

Run ``python -m lawn.harness.lottery_curves ROWS.jsonl --out DIR [--verdicts DIR/verdicts.json]``: it writes
``curves.md``, ``accuracy_vs_remaining.png`` and ``correlation_vs_remaining.png``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lawn.harness.lottery_arm_style import ARM_COLORS, ARM_LABELS
from lawn.harness.verdicts import mean_and_half_width

IMP_ARMS = (
    "imp_ticket",
    "imp_late_ticket",
    "imp_reinit",
    "imp_random_mask",
    "imp_lr_rewind",
    "imp_finetune",
    "imp_finetune_dense",
)
MATCHING = ("level", "better")  # a ticket "matches dense" where its comparison with dense is rated one of these


@dataclass(frozen=True)
class Point:
    """One (lr, arm, round) over its seeds: fraction of the weights remaining, mean, 95 % half-width, seeds."""

    remaining: float
    mean: float
    half: float
    n: int


def _test(row: dict[str, Any]) -> float:
    return 0.0 if row["test_metric"] is None else float(row["test_metric"])  # a diverged seed counts as 0


def _start_correlation(row: dict[str, Any], key: str) -> float:
    """The row's start-vs-end correlation over the surviving weights (the dense row: θ₀ vs θ_T)."""
    corr = row["correlation"]
    return float((corr.get("start") or corr["initial"])["global"][key])


def curves(
    rows: list[dict[str, Any]], value: str = "test", correlation: str = "pearson"
) -> dict[float, dict[str, list[Point]]]:
    """lr → arm → points in the order of the fraction remaining (largest first); ``value`` is ``"test"`` (test
    accuracy) or ``"correlation"`` (``correlation`` of each row's start with its end). Dense is the arm
    ``"dense"`` at fraction 1."""
    if value not in ("test", "correlation"):
        raise ValueError(f"value={value!r}: give 'test' or 'correlation'")
    cells: dict[tuple[float, str, float], dict[int, float]] = defaultdict(dict)
    nets = set()
    for row in rows:
        lot, config = row.get("lottery"), row.get("config")
        if lot is None or config is None:
            raise ValueError(f"row {row.get('key', '?')}: not a lottery row (no 'lottery' or 'config' field)")
        nets.add(f"{config['dataset']} / {config['model']}")
        if len(nets) > 1:
            raise ValueError(f"rows of {sorted(nets)}: draw the curves of one data set and model at a time")
        arm = lot["arm"]
        if arm != "dense" and arm not in IMP_ARMS:
            continue
        y = _test(row) if value == "test" else _start_correlation(row, correlation)
        cells[(float(config["lr"]), arm, 1.0 - float(lot["sparsity"]))][int(config["seed"])] = y
    out: dict[float, dict[str, list[Point]]] = defaultdict(dict)
    order = {arm: i for i, arm in enumerate(("dense", *IMP_ARMS))}
    for lr, arm in sorted({(lr, arm) for lr, arm, _ in cells}, key=lambda k: (k[0], order[k[1]])):
        fractions = sorted((f for (r, a, f) in cells if r == lr and a == arm), reverse=True)
        out[lr][arm] = [
            Point(f, *mean_and_half_width(list(cells[(lr, arm, f)].values())), len(cells[(lr, arm, f)]))
            for f in fractions
        ]
    if not out:
        raise ValueError("no dense or imp_* rows: these curves need an IMP lottery study (imp_arms in its spec)")
    return dict(out)


def sparsest_matching_ticket(verdicts: list[dict[str, Any]], arm: str = "imp_ticket") -> dict[float, int | None]:
    """lr → the largest pre-registered round at which ``arm`` vs dense is rated ``level`` or ``better``
    (``None`` where no round is)."""
    out: dict[float, int | None] = {}
    for v in verdicts:
        a, b = v["a"]["fields"], v["b"]["fields"]
        if a.get("arm") != arm or b.get("arm") != "dense" or "round" not in a:
            continue
        lr = float(v["group"]["lr"])
        best = out.get(lr)
        if v["verdict"] in MATCHING and (best is None or a["round"] > best):
            out[lr] = int(a["round"])
        else:
            out.setdefault(lr, None)
    return out


@dataclass(frozen=True)
class Reading:
    """Liu et al.'s claim at one round, read from two verdicts beside the rows' correlations (not a paired test
    of the interaction): per learning rate the ticket's start-vs-end Pearson correlation (mean over seeds), the
    ticket − random re-init mean difference and its verdict; ``supported`` when the correlation is higher at the
    small rate, the comparison is ``better`` there, and its mean difference is larger than at the large rate."""

    round: int
    remaining: float
    correlation: dict[float, float]
    difference: dict[float, float]
    verdict: dict[float, str]

    @property
    def supported(self) -> bool:
        small, large = min(self.correlation), max(self.correlation)
        return (
            self.correlation[small] > self.correlation[large]
            and self.verdict[small] == "better"
            and self.difference[small] > self.difference[large]
        )


def correlation_reading(
    rows: list[dict[str, Any]], verdicts: list[dict[str, Any]], arm: str = "imp_ticket", control: str = "imp_reinit"
) -> list[Reading]:
    """One :class:`Reading` per round where ``arm`` vs ``control`` was declared at exactly two learning rates."""
    compared: dict[int, dict[float, dict[str, Any]]] = defaultdict(dict)
    for v in verdicts:
        a, b = v["a"]["fields"], v["b"]["fields"]
        if a.get("arm") == arm and b.get("arm") == control and "round" in a:
            compared[int(a["round"])][float(v["group"]["lr"])] = v
    readings = []
    for rnd, by_lr in sorted(compared.items()):
        if len(by_lr) != 2:
            continue
        chain = [r for r in rows if r["lottery"].get("arm") == arm and r["lottery"].get("round") == rnd]
        correlation = {}
        for lr in by_lr:
            values = [_start_correlation(r, "pearson") for r in chain if float(r["config"]["lr"]) == lr]
            if not values:
                raise ValueError(f"round {rnd}, lr {lr:g}: verdicts name {arm} rows that the results do not hold")
            correlation[lr] = sum(values) / len(values)
        readings.append(
            Reading(
                rnd,
                1.0 - float(chain[0]["lottery"]["sparsity"]),
                correlation,
                {lr: float(v["mean_diff"]) for lr, v in by_lr.items()},
                {lr: str(v["verdict"]) for lr, v in by_lr.items()},
            )
        )
    return readings


def markdown(rows: list[dict[str, Any]], verdicts: list[dict[str, Any]] | None = None) -> str:
    """Tables of the curves: per learning rate, test accuracy (mean ± 95 % half-width, in %) of every arm at
    every fraction remaining, then the start-vs-end Pearson correlation of every chain."""
    lines = ["# IMP curves", ""]
    lines += ["Mean over seeds ± half-width of the 95 % t-interval; `n` seeds per cell where fewer than the most.", ""]
    if verdicts is not None:
        lines += ["Sparsest ticket that matches dense (largest pre-registered round rated `level` or `better`):", ""]
        remaining = {r["lottery"]["round"]: 1 - r["lottery"]["sparsity"] for r in rows if "round" in r["lottery"]}
        for lr, rnd in sorted(sparsest_matching_ticket(verdicts).items()):
            where = "none" if rnd is None else f"round {rnd}"
            if rnd in remaining:
                where += f" ({100 * remaining[rnd]:.1f} % of the weights)"
            lines.append(f"- lr {lr:g}: {where}")
        lines.append("")
        readings = correlation_reading(rows, verdicts)
        if readings:
            small, large = min(readings[0].correlation), max(readings[0].correlation)
            lines += [
                "Liu et al.'s claim, \"the ticket's advantage over random re-init is larger where the weight "
                'correlation is higher": read at each round from the two verdicts of ticket vs random re-init beside '
                "the ticket rows' start-vs-end Pearson correlation (mean over seeds); a reading of two verdicts, not a "
                f"paired test of the interaction. Supported where the correlation is higher at lr {small:g}, the "
                f"verdict there is `better`, and its mean difference exceeds the one at lr {large:g}.",
                "",
                f"| round | weights remaining | correlation, lr {small:g} | correlation, lr {large:g} | "
                f"ticket − re-init, lr {small:g} | ticket − re-init, lr {large:g} | supported |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in readings:
                lines.append(
                    f"| {r.round} | {100 * r.remaining:.1f} % | {r.correlation[small]:.2f} | "
                    f"{r.correlation[large]:.2f} | {100 * r.difference[small]:+.2f} points ({r.verdict[small]}) | "
                    f"{100 * r.difference[large]:+.2f} points ({r.verdict[large]}) | "
                    f"{'yes' if r.supported else 'no'} |"
                )
            lines.append("")
    for value, title, scale in (("test", "test accuracy (%)", 100.0), ("correlation", "start vs end, Pearson", 1.0)):
        for lr, arms in sorted(curves(rows, value).items()):
            fractions = sorted({p.remaining for pts in arms.values() for p in pts}, reverse=True)
            most = max(p.n for pts in arms.values() for p in pts)
            lines += [f"## lr {lr:g}: {title}", ""]
            lines.append("| arm | " + " | ".join(f"{100 * f:.1f} %" for f in fractions) + " |")
            lines.append("|---|" + "---|" * len(fractions))
            for arm, pts in arms.items():
                by = {p.remaining: p for p in pts}
                cells = []
                for f in fractions:
                    p = by.get(f)
                    cell = (
                        "" if p is None else f"{scale * p.mean:.2f}" + (f" ± {scale * p.half:.2f}" if p.n > 1 else "")
                    )
                    cells.append(cell + (f" (n {p.n})" if p is not None and p.n < most else ""))
                lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: str | Path, title: str = "", suffix: str = "") -> list[Path]:
    """``accuracy_vs_remaining{suffix}.png`` and ``correlation_vs_remaining{suffix}.png`` in ``out``: one panel
    per learning rate, one line per arm with its 95 % band, dense as a band across the panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for value, name, ylabel in (
        ("test", f"accuracy_vs_remaining{suffix}.png", "test accuracy (mean, 95 % band over seeds)"),
        ("correlation", f"correlation_vs_remaining{suffix}.png", "start vs end weights, Pearson (survivors)"),
    ):
        data = curves(rows, value)
        fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 4.5), sharey=True, squeeze=False)
        for ax, (lr, arms) in zip(axes[0], sorted(data.items())):
            for arm, pts in arms.items():
                xs, ys, hs = [p.remaining for p in pts], [p.mean for p in pts], [p.half for p in pts]
                if arm == "dense":
                    ax.axhspan(ys[0] - hs[0], ys[0] + hs[0], color="0.8", alpha=0.6)
                    ax.axhline(
                        ys[0], color="k", ls="--", lw=1, label="dense (θ₀ vs θ_T)" if value != "test" else "dense"
                    )
                    continue
                color = ARM_COLORS.get(arm, "tab:purple")
                ax.plot(xs, ys, marker=".", color=color, label=ARM_LABELS.get(arm, arm))
                ax.fill_between(
                    xs, [y - h for y, h in zip(ys, hs)], [y + h for y, h in zip(ys, hs)], color=color, alpha=0.15
                )
            ax.set_xscale("log")
            sparsest = min(p.remaining for pts in arms.values() for p in pts)
            ax.set_xlim(1.08, sparsest / 1.15)  # dense on the left, sparser to the right
            ticks = [t for t in (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01) if t >= sparsest / 1.15]
            ax.xaxis.set_major_locator(FixedLocator(ticks))  # plain percentages: log minor labels overlap
            ax.xaxis.set_major_formatter(lambda x, _: f"{100 * x:g} %")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("fraction of the weights remaining (log)")
            ax.set_title(f"{title + ', ' if title else ''}lr = {lr:g}")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lawn.harness.lottery_curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", help="the lottery study's results file (JSONL of `lawn lottery`)")
    parser.add_argument("--out", required=True, help="folder for curves.md and the two plots")
    parser.add_argument(
        "--verdicts", help="the study's verdicts.json (from `lawn report --spec`): adds the sparsest matching ticket"
    )
    parser.add_argument("--title", default="", help="prefix of each panel's title")
    args = parser.parse_args(argv)
    from lawn.harness.results import read_rows

    rows = [r for r in read_rows(args.rows) if r.get("experiment") == "lottery"]
    verdicts = json.loads(Path(args.verdicts).read_text()) if args.verdicts else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curves.md").write_text(markdown(rows, verdicts))
    paths = [out / "curves.md", *plot(rows, out, args.title)]
    print("wrote: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
