"""Reports from result rows: a markdown table and PNG plots (matplotlib, Agg backend).

For each *panel* (rows sharing everything but optimizer, method, batch size, seed and tuned axes — usually
one data set, model and normalization): a table of the selected test metric (mean ± std over seeds, see
:mod:`lawn.harness.selection`) per optimizer × method × batch size, a detailed table with the chosen grid
points, a plot of the test metric against batch size per optimizer (one line per method), and a plot of
the trajectories (test metric, logit norm, norm of the constrained weights, norm of all weights) per epoch
at the chosen grid points, averaged over seeds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from lawn.harness.selection import Selection, select

PANEL_IGNORES = ("optimizer", "method", "batch_size")
METHOD_ORDER = ("plain", "wd", "wrs", "ssi", "lawn", "lawn_all", "lawn_auto")
METHOD_COLORS = {
    "plain": "tab:blue",
    "wd": "tab:orange",
    "wrs": "tab:red",
    "ssi": "tab:purple",
    "lawn": "tab:green",
}
OTHER_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
OPTIMIZER_ORDER = ("sgd", "adam", "adamw", "lamb", "lars")
TRAJECTORIES = (
    ("test_metric", "test {metric}"),
    ("train_loss", "training loss"),
    ("logit_norm", "mean ‖logits‖ (test)"),
    ("constrained_norm", "‖final homogeneous weights‖"),
    ("tangential_step", "tangential step / ‖W‖"),
    ("weight_norm", "‖all weights‖"),
)
LOG_SCALED = ("train_loss", "logit_norm", "tangential_step")
#: ``row["experiment"]`` of a study driver's rows (which keep no per-epoch history) → the module and function that
#: write their report
STUDY_REPORTS = {
    "lottery": ("lawn.harness.lottery_report", "write_lottery_report"),
    "unification": ("lawn.harness.studies.unification_frontier", "write_unification_report"),
}


def unique_rows(rows: list[dict[str, Any]], sources: list[str] | None = None) -> list[dict[str, Any]]:
    """``rows`` checked and de-duplicated by ``key`` (the first row of each key is kept).

    Reporting several files that share runs (a sweep file and a copy of part of it) must count each run once:
    a duplicate would count a seed twice and shrink the std. A row without a ``config`` dict is a
    ``ValueError`` naming its key (and, with ``sources``, the files read).
    """
    seen: set[str] = set()
    unique = []
    for row in rows:
        if not isinstance(row.get("config"), dict):
            where = f" (in {', '.join(sources)})" if sources else ""
            raise ValueError(
                f"result row {row.get('key', '?')!r}{where} has no 'config' object; it is not a row written by "
                "lawn run / lawn sweep"
            )
        if row["key"] not in seen:
            seen.add(row["key"])
            unique.append(row)
    return unique


def numbered_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """The rows of the results file ``path`` with their line numbers (:func:`lawn.harness.results.read_rows`)."""
    from lawn.harness.results import read_rows

    rows = read_rows(path)
    complete = Path(path).read_bytes().split(b"\n")[:-1]  # read_rows keeps every non-blank complete line
    numbers = [number for number, line in enumerate(complete, start=1) if line.strip()]
    return list(zip(numbers, rows))


def check_row(row: dict[str, Any], where: str) -> None:
    """A ``ValueError`` naming ``where`` (file:line) for a row ``lawn report`` cannot use: no ``config`` object, or
    a sweep row without a non-empty ``history`` (the study drivers' rows, :data:`STUDY_REPORTS`, keep none)."""
    if not isinstance(row.get("config"), dict):
        raise ValueError(
            f"result row {row.get('key', '?')!r} ({where}) has no 'config' object; it is not a row written by "
            "lawn run / lawn sweep / lawn lottery"
        )
    history = row.get("history")
    if row.get("experiment") not in STUDY_REPORTS and (not isinstance(history, list) or not history):
        raise ValueError(
            f"result row {row.get('key', '?')!r} ({where}) has no 'history' (or an empty one); a finished run of "
            "lawn run / lawn sweep records one entry per epoch: rerun it or remove the line"
        )


def read_reported_rows(paths: list[str]) -> list[dict[str, Any]]:
    """The rows of every results file in ``paths``, each checked (:func:`check_row`, naming its file and line) and
    de-duplicated by key (:func:`unique_rows`)."""
    rows = []
    for path in paths:
        for number, row in numbered_rows(path):
            check_row(row, f"{path}:{number}")
            rows.append(row)
    return unique_rows(rows, [str(p) for p in paths])


def panels(selections: list[Selection]) -> list[tuple[dict[str, Any], list[Selection]]]:
    """Group selections by their setting minus optimizer/method/batch size and any tuned axis."""
    tuned_anywhere = {t for s in selections for t in s.tuned}
    groups: dict[str, list[Selection]] = defaultdict(list)
    identity: dict[str, dict[str, Any]] = {}
    for s in selections:
        panel = {k: v for k, v in s.setting.items() if k not in PANEL_IGNORES and k not in tuned_anywhere}
        key = json.dumps(panel, sort_keys=True)
        groups[key].append(s)
        identity[key] = panel
    return [(identity[k], groups[k]) for k in sorted(groups)]


def _order(values: list[str], preferred: tuple[str, ...]) -> list[str]:
    return sorted(set(values), key=lambda v: (preferred.index(v) if v in preferred else len(preferred), v))


def _colors(methods: list[str]) -> dict[str, str]:
    """A fixed colour per known method; methods registered elsewhere get the remaining ones in turn."""
    others = [m for m in methods if m not in METHOD_COLORS]
    return {**METHOD_COLORS, **{m: OTHER_COLORS[i % len(OTHER_COLORS)] for i, m in enumerate(others)}}


def _mean_std(mean: float, std: float, seeds: int, count: bool = True) -> str:
    """``mean ± std (n)``; with one seed there is no spread to show: ``mean (n = 1)``."""
    if seeds == 1:
        return f"{mean:.4f}" + (" (n = 1)" if count else "")
    return f"{mean:.4f} ± {std:.4f}" + (f" ({seeds})" if count else "")


def _cell(s: Selection) -> str:
    text = _mean_std(s.test_mean, s.test_std, s.seeds)
    return text + (f" ⚠{s.diverged} diverged" if s.diverged else "")


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _varying(panel_list: list[tuple[dict[str, Any], list[Selection]]]) -> list[str]:
    keys = sorted({k for panel, _ in panel_list for k in panel})
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p, _ in panel_list}) > 1]


def markdown(rows: list[dict[str, Any]], sources: list[str] | None = None) -> str:
    """The report's markdown text."""
    selections = select(rows)
    panel_list = panels(selections)
    varying = _varying(panel_list)
    lines = ["# LAWN study report", ""]
    if sources:
        lines += [f"Results: {', '.join(f'`{s}`' for s in sources)} ({len(rows)} runs).", ""]
    lines += [
        "Each cell: test metric at the grid point chosen by mean validation metric (last epoch), "
        "mean ± sample std over seeds (number of seeds); diverged seeds count as 0.",
        "",
    ]
    for index, (panel, group) in enumerate(panel_list):
        title = f"{panel.get('dataset')} / {panel.get('model')}"
        extra = ", ".join(f"{k}={_fmt(panel.get(k))}" for k in varying if k not in ("dataset", "model"))
        lines += [f"## {index + 1}. {title}" + (f" ({extra})" if extra else ""), ""]
        metric = group[0].metric
        batches = sorted({s.setting["batch_size"] for s in group})
        lines += [
            f"Test {metric} by batch size. Epochs: {panel.get('epochs')}, schedule: {panel.get('schedule')}, "
            f"lr scaling: {panel.get('lr_scaling')} (base batch {panel.get('base_batch_size')}).",
            "",
            "| optimizer | method | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---|---|" + "---|" * len(batches),
        ]
        by = {(s.setting["optimizer"], s.setting["method"], s.setting["batch_size"]): s for s in group}
        optimizers = _order([s.setting["optimizer"] for s in group], OPTIMIZER_ORDER)
        methods = _order([s.setting["method"] for s in group], METHOD_ORDER)
        for o in optimizers:
            for m in methods:
                if not any((o, m, b) in by for b in batches):
                    continue
                cells = [_cell(by[(o, m, b)]) if (o, m, b) in by else "–" for b in batches]
                lines.append(f"| {o} | {m} | " + " | ".join(cells) + " |")
        has_auc = any(s.test_auc_mean is not None for s in group)
        lines += [
            "",
            "| optimizer | method | batch | grid points | chosen | val (mean) | test | seeds | diverged "
            "| final train loss | final ‖logits‖ |" + (" test AUC |" if has_auc else ""),
            "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if has_auc else ""),
        ]
        for o in optimizers:
            for m in methods:
                for b in batches:
                    s = by.get((o, m, b))
                    if s is None:
                        continue
                    chosen = ", ".join(f"{k}={_fmt(v)}" for k, v in s.chosen.items())
                    auc = ""
                    if has_auc:
                        assert s.test_auc_mean is not None and s.test_auc_std is not None
                        auc = f" {_mean_std(s.test_auc_mean, s.test_auc_std, s.seeds, count=False)} |"
                    lines.append(
                        f"| {o} | {m} | {b} | {s.grid_size} | {chosen} | {s.val_mean:.4f} | "
                        f"{_mean_std(s.test_mean, s.test_std, s.seeds, count=False)} | {s.seeds} | {s.diverged} | "
                        f"{_final_mean(s.rows, 'train_loss')} | {_final_mean(s.rows, 'logit_norm')} |" + auc
                    )
        suffix = _suffix(index, panel, len(panel_list))
        lines += [
            "",
            f"Plots: [test {metric} vs batch size](accuracy_vs_batch{suffix}.png) (error bars: ± sample std over "
            f"seeds), [trajectories per epoch](norms{suffix}.png) (dotted vertical lines: LAWN's switch).",
            "",
            f"![test {metric} vs batch size](accuracy_vs_batch{suffix}.png)",
            "",
            f"![trajectories](norms{suffix}.png)",
            "",
        ]
    return "\n".join(lines)


def _final_mean(rows: list[dict[str, Any]], key: str) -> str:
    """Mean over seeds of the last epoch's ``key`` (diagnostics of the chosen grid point), or a dash."""
    values = [row["history"][-1].get(key) for row in rows if not row.get("diverged")]
    values = [v for v in values if v is not None]
    return f"{sum(values) / len(values):.4g}" if values else "–"


def _switch_epoch(rows: list[dict[str, Any]]) -> float | None:
    """The epoch (fractional) at which LAWN switched in these runs, or ``None`` for runs without a switch."""
    row = rows[0]
    if row.get("free_steps") is None or not row.get("steps_per_epoch"):
        return None
    return row["free_steps"] / row["steps_per_epoch"]


def _suffix(index: int, panel: dict[str, Any], count: int) -> str:
    return "" if count == 1 else f"_{index + 1}_{panel.get('dataset')}_{panel.get('model')}"


def _mean_curve(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        for entry in row.get("history", []):
            if entry.get(key) is not None:
                by_epoch[entry["epoch"]].append(float(entry[key]))
    epochs = sorted(by_epoch)
    return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]


def plot_panel(group: list[Selection], title: str, batch_path: Path, norms_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    optimizers = _order([s.setting["optimizer"] for s in group], OPTIMIZER_ORDER)
    methods = _order([s.setting["method"] for s in group], METHOD_ORDER)
    colors = _colors(methods)
    batches = sorted({s.setting["batch_size"] for s in group})
    metric = group[0].metric
    by = {(s.setting["optimizer"], s.setting["method"], s.setting["batch_size"]): s for s in group}

    fig, axes = plt.subplots(1, len(optimizers), figsize=(max(6.0, 4.2 * len(optimizers)), 3.6), squeeze=False)
    for ax, o in zip(axes[0], optimizers):
        for m in methods:
            points = [(b, by[(o, m, b)]) for b in batches if (o, m, b) in by]
            if not points:
                continue
            ax.errorbar(
                [b for b, _ in points],
                [s.test_mean for _, s in points],
                yerr=[s.test_std for _, s in points],
                marker="o",
                capsize=3,
                label=m,
                color=colors[m],
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_title(o)
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(batch_path, dpi=110)
    plt.close(fig)

    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(
        len(TRAJECTORIES),
        len(optimizers),
        figsize=(max(6.0, 4.2 * len(optimizers)), 2.6 * len(TRAJECTORIES)),
        squeeze=False,
    )
    for col, o in enumerate(optimizers):
        for row_index, (key, label) in enumerate(TRAJECTORIES):
            ax = axes[row_index][col]
            for m in methods:
                for bi, b in enumerate(batches):
                    s = by.get((o, m, b))
                    if s is None:
                        continue
                    epochs, values = _mean_curve(s.rows, key)
                    ax.plot(
                        epochs,
                        values,
                        styles[bi % len(styles)],
                        color=colors[m],
                        label=f"{m} bs={b}",
                    )
                    switch = _switch_epoch(s.rows)
                    if switch is not None:
                        ax.axvline(switch, color=colors[m], linestyle=":", linewidth=1, alpha=0.8)
            ax.set_ylabel(label.format(metric=metric))
            if key in LOG_SCALED:
                ax.set_yscale("log")
            if key == "logit_norm":  # a decade or two: plain numbers read better than powers of ten
                ax.yaxis.set_major_formatter(ScalarFormatter())
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
            if row_index == 0:
                ax.set_title(o)
            if row_index == len(TRAJECTORIES) - 1:
                ax.set_xlabel("epoch")
    fig.suptitle(
        f"{title}\ntrajectories at the chosen grid points (mean over seeds); dotted: LAWN's switch", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(norms_path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict[str, Any]], out_dir: str | Path, sources: list[str] | None = None) -> list[Path]:
    """Write ``report.md`` and the plots into ``out_dir``; return the paths written."""
    rows = unique_rows(rows, sources)
    if not rows:
        raise ValueError("report: no result rows to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.md"]
    written[0].write_text(markdown(rows, sources))
    panel_list = panels(select(rows))
    for index, (panel, group) in enumerate(panel_list):
        suffix = _suffix(index, panel, len(panel_list))
        batch_path = out / f"accuracy_vs_batch{suffix}.png"
        norms_path = out / f"norms{suffix}.png"
        plot_panel(group, f"{panel.get('dataset')} / {panel.get('model')}", batch_path, norms_path)
        written += [batch_path, norms_path]
    return written
