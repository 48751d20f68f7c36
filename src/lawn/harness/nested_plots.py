"""Does the learned ordering leave its prior? The keep probabilities in nested runs' histories, as a plot and a table.

    python -m lawn.harness.nested_plots ROWS.jsonl --out ordering.png

One panel per learned-arm run of ``ROWS`` (by keep-logit lr scale and KL weight): ``P(group j kept)``
against ``j`` for each nested layer, every epoch (light to dark), and the prior ``Π_{i<j} (1 − nested_rate)``
dashed. The table (printed, and written next to the plot as ``.md``) gives per run the largest
``|P(kept) − prior|`` over groups and layers at the last epoch, and the test accuracy at the smallest and the
full width.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lawn.harness.results import read_rows


def _runs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[float, float]]]:
    """One (width-1 row, accuracy by width) per learned run, by KL weight."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["config"].get("nested_arm") == "learned":
            by_run.setdefault(row["run_key"], []).append(row)
    out = []
    for group in by_run.values():
        full = max(group, key=lambda r: r["config"]["eval_width"])
        out.append((full, {r["config"]["eval_width"]: r["test_metric"] for r in group}))
    return sorted(
        out, key=lambda item: (_scale(item[0]), item[0]["config"]["nested_kl_weight"], item[0]["config"]["seed"])
    )


def _scale(row: dict[str, Any]) -> float:
    return row["config"].get("nested_order_lr_scale", 1.0)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| KL weight | keep-logit lr × | seed | epochs | max \\|P(kept) − prior\\| (last epoch) | per layer "
        "| test acc. 1/8 width | full width |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for full, accuracy in _runs(rows):
        first, last = full["history"][0]["keep_probabilities"], full["history"][-1]["keep_probabilities"]
        per_layer = [max(abs(a - b) for a, b in zip(p, q)) for p, q in zip(last, first)]
        c = full["config"]
        lines.append(
            f"| {c['nested_kl_weight']:g} | {_scale(full):g} | {c['seed']} | {full['epochs_run']} | "
            f"{max(per_layer):.3f} | "
            + ", ".join(f"{d:.3f}" for d in per_layer)
            + f" | {accuracy[min(accuracy)]:.4f} | {accuracy[max(accuracy)]:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _runs(rows)
    if not runs:
        raise ValueError("no learned-ordering rows (nested_arm = 'learned') to plot")
    cols = min(4, len(runs))
    rows_ = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(3.2 * cols, 3.0 * rows_ + 0.4), sharey=True, squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.axis("off")
    for ax, (full, _) in zip(axes.flat, runs):
        history = full["history"]
        for layer in range(len(history[0]["keep_probabilities"])):
            for e, entry in enumerate(history[1:], 1):
                probs = entry["keep_probabilities"][layer]
                last = e == len(history) - 1
                ax.plot(range(1, len(probs) + 1), probs, color=f"C{layer}", alpha=0.25 + 0.75 * e / (len(history) - 1),
                        lw=2 if last else 0.8, label=f"layer {layer + 1}" if last else None)  # fmt: skip
        prior = history[0]["keep_probabilities"][0]
        ax.plot(range(1, len(prior) + 1), prior, "k--", lw=1, label="prior")
        scale = f", logit lr ×{_scale(full):g}" if _scale(full) != 1.0 else ""
        ax.set_title(f"KL weight {full['config']['nested_kl_weight']:g}{scale}", fontsize=9)
        ax.set_xlabel("group j")
    for row in axes:
        row[0].set_ylabel("P(group j kept)")
    axes.flat[len(runs) - 1].legend(fontsize=7)
    fig.suptitle("Learned ordering: keep probabilities per epoch (light → dark) against the prior", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows")
    parser.add_argument("--out", required=True, help="the plot (.png); the table goes next to it (.md)")
    args = parser.parse_args(argv)
    rows = read_rows(args.rows)
    plot(rows, args.out)
    text = table(rows)
    Path(args.out).with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
