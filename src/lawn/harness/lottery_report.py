"""The report of a lottery study (``lawn report`` on rows of ``lawn lottery``): tables and two plots.

Per panel (data set / model): test metric by arm × sparsity for each learning rate (mean ± sample std over
seeds), paired differences for the three claims (ticket − dense, ticket − reinit, finetune − ticket; the
mean and std over seeds of the per-seed difference), the initial/trained weight correlation by learning rate,
IMP rows if any, and the wall time of each arm. Plots: ``accuracy_vs_sparsity*.png`` (one panel per learning
rate, one line per arm, dense as a dashed line; each arm its own marker and a small sideways offset, so arms
that tie stay visible) and ``correlation_vs_lr*.png``; with IMP arms also the curves of
:mod:`lawn.harness.lottery_curves` (``curves*.md``, ``accuracy_vs_remaining*.png``, ``correlation_vs_remaining*.png``).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lawn.harness.lottery_arm_style import ARM_COLORS, ARM_LABELS

ARM_ORDER = (
    "dense",
    "dense_extra",
    "ticket",
    "reinit",
    "finetune",
    "imp_ticket",
    "imp_finetune",
    "late_ticket",
    "random_mask",
    "lr_rewind",
    "finetune_dense",
    "imp_late_ticket",
    "imp_reinit",
    "imp_random_mask",
    "imp_lr_rewind",
    "imp_finetune_dense",
)
ARM_MARKERS = {"ticket": "o", "reinit": "s", "finetune": "^", "imp_ticket": "D", "imp_finetune": "v"}
DODGE = 0.6  # percentage points between neighbouring arms' markers at one sparsity: ties stay visible
CORRELATIONS = ("overlap", "pearson", "spearman", "cosine")
SNAPSHOT = ("overlap", "pearson")  # of θ_k vs θ_T, beside θ₀ vs θ_T


def _ms(values: list[float], digits: int = 4) -> str:
    """``mean ± sample std``; one value has no spread: ``mean (n = 1)``."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} (n = 1)"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _snapshots(rows: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """The dense rows' correlations of a snapshot θ_k (k > 0 steps) with θ_T: (row key, k, column label), for
    the snapshots every dense row recorded. The rewind snapshot at k = 0 is θ₀, already the table's first columns."""
    dense = [r for r in rows if r["lottery"]["arm"] == "dense"]
    out = []
    for key, steps, label in (("rewind", "rewind_steps", "rewind"), ("late", "late_rewind_steps", "late rewind")):
        ks = {r["lottery"].get(steps, 0) for r in dense}
        if dense and len(ks) == 1 and min(ks) > 0 and all(key in r["correlation"] for r in dense):
            k = ks.pop()
            out.append((key, k, f"θ_{k} vs θ_T, {label}"))
    return out


def _cell(values: list[float]) -> str:
    """A table cell: ``mean ± std (n)``, or ``mean (n = 1)`` for one seed."""
    return _ms(values) if len(values) == 1 else f"{_ms(values)} ({len(values)})"


def _metric(row: dict[str, Any]) -> float:
    return 0.0 if row["test_metric"] is None else float(row["test_metric"])  # a diverged seed counts as 0


def _panels(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        c = row["config"]
        groups[f"{c['dataset']} / {c['model']}"].append(row)
    return dict(sorted(groups.items()))


SCALED = ("dense_extra", "finetune", "imp_finetune")  # arms whose learning rate is finetune_lr_scale × lr


def _primary_scale(rows: list[dict[str, Any]]) -> float:
    scales = [r["lottery"]["finetune_lr_scale"] for r in rows if r["lottery"]["arm"] in SCALED]
    return max(set(scales), key=scales.count) if scales else 0.1


def _arm(row: dict[str, Any], primary: float) -> str:
    """The arm's name; a fine-tune-rate arm run at another ``finetune_lr_scale`` becomes ``arm@scale``."""
    lot = row["lottery"]
    if lot["arm"] in SCALED and lot["finetune_lr_scale"] != primary:
        return f"{lot['arm']}@{lot['finetune_lr_scale']:g}"
    return lot["arm"]


def _label(arm: str) -> str:
    name, _, scale = arm.partition("@")
    return ARM_LABELS[name] + (f" (lr × {scale})" if scale else "")


def _index(rows: list[dict[str, Any]]) -> dict[tuple[float, str, float], dict[int, dict[str, Any]]]:
    """(lr, arm, sparsity) → {seed: row}."""
    primary = _primary_scale(rows)
    out: dict[tuple[float, str, float], dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        out[(row["config"]["lr"], _arm(row, primary), row["lottery"]["sparsity"])][row["config"]["seed"]] = row
    return out


def _paired(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]]) -> str:
    seeds = sorted(set(a) & set(b))
    return _ms([100 * (_metric(a[s]) - _metric(b[s])) for s in seeds], 2) if seeds else "–"


def _one_shot_tables(
    index: dict[tuple[float, str, float], dict[int, dict[str, Any]]],
    lr: float,
    sparsities: list[float],
    variants: list[str],
) -> list[str]:
    """Test accuracy of the one-shot arms by sparsity at one learning rate, and their paired differences."""
    lines = [
        "| arm | " + " | ".join(f"{100 * s:g} %" for s in sparsities) + " |",
        "|---|" + "---|" * len(sparsities),
    ]
    for arm in ("dense", "dense_extra", *[v for v in variants if v.startswith("dense_extra@")]):
        runs = index.get((lr, arm, 0.0), {})
        if runs:
            cell = _cell([_metric(r) for r in runs.values()])
            lines.append(f"| {_label(arm)} | " + " | ".join([cell] * len(sparsities)) + " |")
    for arm in ("ticket", "reinit", "finetune", *[v for v in variants if v.startswith("finetune@")]):
        cells = []
        for s in sparsities:
            runs = index.get((lr, arm, s), {})
            cells.append(_cell([_metric(r) for r in runs.values()]) if runs else "–")
        lines.append(f"| {_label(arm)} | " + " | ".join(cells) + " |")
    dense = index.get((lr, "dense", 0.0), {})
    lines += [
        "",
        "| paired difference (points) | " + " | ".join(f"{100 * s:g} %" for s in sparsities) + " |",
        "|---|" + "---|" * len(sparsities),
    ]
    pairs = (
        ("ticket − dense (claim 1)", "ticket", None),
        ("ticket − random re-init (claim 1)", "ticket", "reinit"),
        ("fine-tune − ticket (claim 3)", "finetune", "ticket"),
        ("fine-tune − dense-extra", "finetune", "dense_extra"),
        *[(f"{_label(v)} − ticket (claim 3)", v, "ticket") for v in variants if v.startswith("finetune@")],
    )
    for label, a, b in pairs:
        cells = []
        for s in sparsities:
            other = dense if b is None else index.get((lr, b, 0.0 if b.startswith("dense_extra") else s), {})
            cells.append(_paired(index.get((lr, a, s), {}), other))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def markdown(rows: list[dict[str, Any]], sources: list[str] | None = None) -> str:
    lines = ["# Lottery study report", ""]
    if sources:
        lines += [f"Results: {', '.join(f'`{s}`' for s in sources)} ({len(rows)} rows).", ""]
    one_shot = any(not r["lottery"]["arm"].startswith("imp_") and r["lottery"]["arm"] != "dense" for r in rows)
    lines += [
        "Test accuracy, mean ± sample std over seeds (n)."
        + (
            " Every one-shot arm trains E epochs after the E-epoch dense run that gave its mask (2E in all); "
            "differences are paired by seed, in accuracy points."
            if one_shot
            else " Each IMP round prunes its arm's trained survivors and trains E epochs."
        ),
        "",
    ]
    for number, (title, group) in enumerate(_panels(rows).items(), start=1):
        index = _index(group)
        c = group[0]["config"]
        lot = group[0]["lottery"]
        lrs = sorted({r["config"]["lr"] for r in group})
        sparsities = sorted({k[2] for k in index if k[1].partition("@")[0] in ("ticket", "reinit", "finetune")})
        variants = sorted({k[1] for k in index if "@" in k[1] and not k[1].startswith("imp_")})
        lines += [
            f"## {number}. {title}",
            "",
            f"{c['optimizer']} (momentum {c['momentum']}), batch {c['batch_size']}, E = {c['epochs']} epochs, "
            f"{c['schedule']} schedule, train_limit {c['train_limit']}; pruning scope {lot['scope']}, rewind to step "
            f"{lot['rewind_steps']}"
            + (f", late rewind to step {lot['late_rewind_steps']}" if lot.get("late_rewind_steps") else "")
            + f", fine-tune / dense-extra lr = {lot['finetune_lr_scale']} × lr.",
            "",
        ]
        for lr in lrs:
            lines += [f"### lr = {lr:g}", ""]
            if sparsities:
                lines += _one_shot_tables(index, lr, sparsities, variants)
            else:  # an IMP-only study: its dense net stands alone
                dense_runs = index.get((lr, "dense", 0.0), {})
                cell = _cell([_metric(r) for r in dense_runs.values()])
                lines += ["| arm | test accuracy |", "|---|---|", f"| {_label('dense')} | {cell} |", ""]
            imp = sorted({(k[1], k[2]) for k in index if k[0] == lr and k[1].startswith("imp_")})
            if imp:
                lines += ["IMP (E epochs per round; round r has trained (r + 1)·E epochs in all):", ""]
                lines += ["| arm | sparsity | test accuracy | total epochs |", "|---|---|---|---|"]
                for arm, s in imp:
                    runs = index[(lr, arm, s)]
                    total = next(iter(runs.values()))["lottery"]["total_epochs"]
                    lines.append(
                        f"| {_label(arm)} | {100 * s:g} % | {_cell([_metric(r) for r in runs.values()])} | {total} |"
                    )
                lines.append("")
        snapshots = _snapshots(group)
        lines += [
            "### Initial / trained weight correlation (pruned layers, global)",
            "",
            f"top-p overlap with p = {lot.get('correlation_top', 0.2)} (chance = p); Pearson and Spearman of |θ₀| vs "
            "|θ_T|; cosine of θ₀ and θ_T (chance 0)"
            + "".join(f"; overlap and Pearson of {label} (θ_k: the weights after k steps)" for _, _, label in snapshots)
            + ".",
            "",
            "| lr | "
            + " | ".join([*CORRELATIONS, *(f"{m} ({label})" for _, _, label in snapshots for m in SNAPSHOT)])
            + " |",
            "|---|" + "---|" * (len(CORRELATIONS) + len(SNAPSHOT) * len(snapshots)),
        ]
        for lr in lrs:
            dense_rows = list(index.get((lr, "dense", 0.0), {}).values())
            cells = [_ms([r["correlation"]["initial"]["global"][k] for r in dense_rows], 3) for k in CORRELATIONS]
            for key, _, _ in snapshots:
                cells += [_ms([r["correlation"][key]["global"][m] for r in dense_rows], 3) for m in SNAPSHOT]
            lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
        lines += ["", "### Wall time per run (s, one CPU thread on a shared machine)", ""]
        lines += ["| arm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
        arms = [a for a in ARM_ORDER if any(k[1] == a for k in index)] + variants
        for arm in arms:
            cells = []
            for lr in lrs:
                secs = [
                    r["timing"]["seconds"] for k, runs in index.items() if k[:2] == (lr, arm) for r in runs.values()
                ]
                cells.append(_ms(secs, 1) if secs else "–")
            lines.append(f"| {_label(arm)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    panels = _panels(rows)
    for number, (title, group) in enumerate(panels.items(), start=1):
        suffix = "" if len(panels) == 1 else f"_{number}"
        index = _index(group)
        lrs = sorted({r["config"]["lr"] for r in group})
        fig, axes = plt.subplots(1, len(lrs), figsize=(5 * len(lrs), 4), sharey=True, squeeze=False)
        for ax, lr in zip(axes[0], lrs):
            dense = [_metric(r) for r in index.get((lr, "dense", 0.0), {}).values()]
            if dense:
                ax.axhline(statistics.fmean(dense), color="k", ls="--", lw=1, label="dense (E)")
            extra = sorted({k[1] for k in index if "@" in k[1]})
            arms = [
                arm
                for arm in ("dense_extra", "ticket", "reinit", "finetune", "imp_ticket", "imp_finetune", *extra)
                if any(k[0] == lr and k[1] == arm for k in index)
            ]
            series = [arm for arm in arms if not arm.startswith("dense_extra")]
            for arm in arms:
                xs = sorted({k[2] for k in index if k[0] == lr and k[1] == arm})
                values = [[_metric(r) for r in index[(lr, arm, s)].values()] for s in xs]
                means = [statistics.fmean(v) for v in values]
                stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
                color = ARM_COLORS.get(arm, "tab:purple")
                if arm.startswith("dense_extra"):
                    ax.axhline(means[0], color=color, ls=":", lw=1.5, label=_label(arm))
                    continue
                offset = (series.index(arm) - (len(series) - 1) / 2) * DODGE
                ax.errorbar(
                    [100 * x + offset for x in xs],
                    means,
                    yerr=stds,
                    marker=ARM_MARKERS.get(arm.partition("@")[0], "P"),
                    markerfacecolor="none" if "@" in arm else color,
                    capsize=3,
                    label=_label(arm),
                    color=color,
                    ls="--" if arm.startswith("imp_") else "-",
                )
            ax.set_title(f"{title}, lr = {lr:g}")
            ax.set_xlabel(f"sparsity of the pruned layers (%; arms offset by {DODGE:g} apart)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy")
        handles: dict[str, Any] = {}
        for ax in axes[0]:  # one legend with every arm of every panel (IMP runs at one rate only)
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        axes[0][-1].legend(list(handles.values()), list(handles), fontsize=8)
        fig.tight_layout()
        path = out / f"accuracy_vs_sparsity{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        fig, ax = plt.subplots(figsize=(5, 4))
        for key in CORRELATIONS:
            values = [
                [r["correlation"]["initial"]["global"][key] for r in index.get((lr, "dense", 0.0), {}).values()]
                for lr in lrs
            ]
            ax.errorbar(
                lrs,
                [statistics.fmean(v) for v in values],
                yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values],
                marker="o",
                capsize=3,
                label=key,
            )
        top = group[0]["lottery"].get("correlation_top", 0.2)
        ax.axhline(top, color="k", ls=":", lw=1, label=f"chance (overlap) = {top:g}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("θ₀ vs θ_T (pruned layers, global)")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"correlation_vs_lr{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_lottery_report(rows: list[dict[str, Any]], out: str | Path, sources: list[str] | None = None) -> list[Path]:
    """Write ``report.md`` and the plots into ``out``; return their paths (the markdown first)."""
    bad = [i for i, r in enumerate(rows) if "lottery" not in r or "config" not in r]
    if bad:
        raise ValueError(f"report: row(s) {bad[:5]} are not lottery rows")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    path.write_text(markdown(rows, sources))
    return [path, *plot(rows, out), *_imp_curves(rows, out)]


def _imp_curves(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Per panel with IMP rows: ``curves*.md`` and the plots of :mod:`lawn.harness.lottery_curves`."""
    from lawn.harness import lottery_curves

    panels = _panels(rows)
    written: list[Path] = []
    for number, (title, group) in enumerate(panels.items(), start=1):
        if not any(r["lottery"]["arm"] in lottery_curves.IMP_ARMS for r in group):
            continue
        suffix = "" if len(panels) == 1 else f"_{number}"
        path = out / f"curves{suffix}.md"
        path.write_text(lottery_curves.markdown(group))
        written += [path, *lottery_curves.plot(group, out, title, suffix)]
    return written
