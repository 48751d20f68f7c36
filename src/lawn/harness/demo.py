"""``lawn demo``: Adam vs Adam+LAWN at a small and a large batch size on a real data set, in minutes on CPU.

Default: Fashion-MNIST (from ``/usr/share/datasets/fashion-mnist``, Debian package ``dataset-fashion-mnist``)
when present, else MNIST-1D (generated locally, nothing to install). Batch sizes 128 and 2048 with the
square-root learning-rate scaling rule, learning-rate grid {1e-3, 3e-3} for both methods, 3 seeds, LAWN's free
phase the first 20 % of the steps. Per data set:

* Fashion-MNIST: a 10 000-example training pool (10 % carved off for validation), 5 000 test examples, the BN
  MLP, 15 epochs.
* MNIST-1D: 12 500 generated examples (10 000 train, 10 % of them for validation, 2 500 test), the BN 1-D CNN,
  25 epochs: at batch 2048 that is still about 110 optimizer steps, enough for every run to converge.

Everything is an ordinary sweep: the results file resumes like any other. :func:`verdict` reads the table back in
plain words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lawn.harness.data_files import FASHION_MNIST_DIR, IDX_NAMES, find_idx

DATASETS = ("auto", "fashion_mnist", "mnist", "mnist1d", "digits", "cifar10")
DEFAULTS: dict[str, Any] = {"seeds": 3, "batch_sizes": [128, 2048], "lrs": [1e-3, 3e-3]}
PER_DATASET: dict[str, dict[str, Any]] = {
    "mnist1d": {"epochs": 25, "model": "cnn1d", "train_limit": None, "test_limit": None,
                "data_options": {"num_samples": 12_500}},
    "digits": {"epochs": 30, "model": "mlp", "train_limit": None, "test_limit": None},
}  # fmt: skip
IMAGE_DEFAULTS: dict[str, Any] = {"epochs": 15, "model": "mlp", "train_limit": 10_000, "test_limit": 5_000}
FILE_SETS = ("fashion_mnist", "mnist")


def default_epochs_text() -> str:
    """The per-data-set epoch defaults in words, for ``--help`` (read from the tables above, never restated)."""
    names = {"mnist1d": "MNIST-1D", "digits": "digits"}
    parts = [f"{IMAGE_DEFAULTS['epochs']} on Fashion-MNIST, MNIST and CIFAR-10"]
    parts += [f"{d['epochs']} on {names.get(n, n)}" for n, d in PER_DATASET.items()]
    return ", ".join(parts)


def settings(dataset: str) -> dict[str, Any]:
    """The demo's per-data-set defaults (epochs, model, subset sizes, data options)."""
    return dict(PER_DATASET.get(dataset, IMAGE_DEFAULTS))


def _missing_idx(directory: Path) -> list[str]:
    missing = []
    for stem in IDX_NAMES.values():
        try:
            find_idx(directory, stem)
        except FileNotFoundError:
            missing.append(stem)
    return missing


def pick_dataset(dataset: str, data_dir: str | None) -> tuple[str, str | None, str | None]:
    """``(dataset, data_dir, notice)``: ``"auto"`` is Fashion-MNIST if its files are there, else MNIST-1D.

    A ``data_dir`` the user named must exist and hold the four IDX files (else ``ValueError``): a typo never
    falls back silently to another data set.
    """
    if data_dir is not None:
        directory = Path(data_dir)
        if dataset not in ("auto", *FILE_SETS):
            raise ValueError(f"--data-dir: the {dataset!r} data set reads no IDX directory; drop --data-dir")
        if not directory.is_dir():
            raise ValueError(f"--data-dir: {directory} is not a directory (check the path)")
        missing = _missing_idx(directory)
        if missing:
            raise ValueError(
                f"--data-dir: {directory} lacks the IDX file(s) {missing} (.gz or not); point it at a directory "
                "holding the four MNIST-style files"
            )
        return ("fashion_mnist" if dataset == "auto" else dataset), data_dir, None
    if dataset != "auto":
        return dataset, None, None
    if Path(FASHION_MNIST_DIR).is_dir() and not _missing_idx(Path(FASHION_MNIST_DIR)):
        return "fashion_mnist", None, None
    notice = (
        f"Fashion-MNIST not found at {FASHION_MNIST_DIR} (install it with `apt-get install dataset-fashion-mnist` "
        "or pass --data-dir); the demo uses MNIST-1D instead, generated locally."
    )
    return "mnist1d", None, notice


def demo_spec(
    dataset: str,
    data_dir: str | None,
    *,
    epochs: int,
    seeds: int,
    batch_sizes: list[int],
    lrs: list[float],
    train_limit: int | None,
    test_limit: int | None,
    model: str = "mlp",
    data_options: dict[str, Any] | None = None,
) -> Any:
    """The demo's :class:`~lawn.harness.sweep.SweepSpec`."""
    from lawn.harness.sweep import SweepSpec

    base: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "width": 32,
        "epochs": epochs,
        "lr_scaling": "sqrt",
        "base_batch_size": 128,
        "schedule": "cosine",
        "warmup_fraction": 0.05,
        "free_fraction": 0.2,
        "train_limit": train_limit,
        "test_limit": test_limit,
    }
    if data_options:
        base["data_options"] = data_options
    if data_dir is not None:
        base["data_dir"] = data_dir
    return SweepSpec.from_dict(
        {
            "base": base,
            "optimizers": ["adam"],
            "methods": ["plain", "lawn"],
            "batch_sizes": batch_sizes,
            "lrs": lrs,
            "seeds": list(range(seeds)),
        }
    )


def full_batch_note(batch_sizes: list[int], examples: int) -> str | None:
    """A note for the batch sizes that are not less than the training set (their runs are full-batch)."""
    full = [b for b in batch_sizes if b >= examples]
    if not full:
        return None
    sizes = ", ".join(str(b) for b in full)
    return (
        f"note: batch size {sizes} is not less than the {examples} training examples: those runs are full-batch "
        "(one step per epoch, the same batch every step)"
    )


def _final(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r["history"][-1].get(key) for r in rows if not r.get("diverged")]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def verdict(selections: list[Any], report_dir: str | Path) -> str:
    """A plain-language reading of the demo's table: per batch size who won, by how much against the seed
    spread, what LAWN did to the logits and the training loss, where the plots are, and what to read next.

    A difference counts as real only when it exceeds the larger of the two methods' seed standard deviations
    (with one seed there is no spread, and the reading says so).
    """
    by = {(s.setting["method"], s.setting["batch_size"]): s for s in selections}
    lines = ["What this run shows:"]
    for batch in sorted({b for _, b in by}):
        plain, lawn = by.get(("plain", batch)), by.get(("lawn", batch))
        if plain is None or lawn is None:
            continue
        diff = lawn.test_mean - plain.test_mean
        spread = max(plain.test_std, lawn.test_std)
        metric = plain.metric
        if min(plain.seeds, lawn.seeds) < 2:
            reading = "one seed only: no seed spread to judge the difference against"
        elif abs(diff) <= spread:
            reading = f"level within seed noise (spread ±{spread:.4f})"
        else:
            reading = f"{'LAWN' if diff > 0 else 'plain Adam'} better, beyond the seed spread (±{spread:.4f})"
        lines.append(
            f"- batch {batch}: test {metric} Adam {plain.test_mean:.4f}, Adam+LAWN {lawn.test_mean:.4f} "
            f"({diff * 100:+.2f} points): {reading}."
        )
        loss_p, loss_l = _final(plain.rows, "train_loss"), _final(lawn.rows, "train_loss")
        norm_p, norm_l = _final(plain.rows, "logit_norm"), _final(lawn.rows, "logit_norm")
        if None not in (loss_p, loss_l, norm_p, norm_l):
            lines.append(
                f"  mechanism: final mean ‖logits‖ {norm_l:.3g} with LAWN vs {norm_p:.3g} without; final train "
                f"loss {loss_l:.3g} vs {loss_p:.3g} (LAWN keeps the logits from growing, so the loss stays "
                "away from 0)"
            )
    out = Path(report_dir)
    lines += [
        "",
        f"Plots: {out / 'accuracy_vs_batch.png'} (test metric ± seed std per batch size) and {out / 'norms.png'} "
        "(test metric, logit norm and weight norms per epoch; the dotted line marks LAWN's switch); table and "
        f"links in {out / 'report.md'}.",
        "",
        "Next: wrap your own optimizer (README, 'Usage'), run LAWN as the paper does (README), or read the full "
        "study with its verdicts (docs/results.md).",
    ]
    return "\n".join(lines)


def report_with_reading(report: str, reading: str) -> str:
    """``report.md`` with the demo's plain-language reading (:func:`verdict`) at its top, under the title."""
    first, sep, rest = report.partition("\n")
    heading, _, body = reading.partition("\n")
    section = f"## {heading.rstrip(':')}\n\n{body}\n"
    if first.startswith("# "):
        return f"{first}\n\n{section}{sep}{rest}"
    return f"{section}\n{report}"
