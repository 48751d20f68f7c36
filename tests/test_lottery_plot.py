"""The lottery plot keeps every arm visible when arms tie: each arm has its own marker and a sideways offset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.axes import Axes  # noqa: E402

from lawn.harness.lottery_report import plot  # noqa: E402


def lottery_row(arm: str, sparsity: float, seed: int, accuracy: float) -> dict[str, Any]:
    lottery = {"arm": arm, "sparsity": sparsity, "finetune_lr_scale": 0.1, "correlation_top": 0.2}
    row = {"key": f"{arm}-{sparsity}-{seed}", "experiment": "lottery", "metric": "accuracy", "lottery": lottery}
    row |= {"config": {"dataset": "digits", "model": "mlp", "lr": 0.1, "seed": seed}, "test_metric": accuracy}
    if arm == "dense":
        row["correlation"] = {"initial": {"global": {"overlap": 0.3, "pearson": 0.1, "spearman": 0.1, "cosine": 0.1}}}
    return row


def test_tied_arms_stay_visible(tmp_path: Path, monkeypatch) -> None:
    rows = [lottery_row("dense", 0.0, seed, 0.9) for seed in (0, 1)]
    rows += [lottery_row(arm, s, seed, 0.8) for arm in ("ticket", "reinit", "finetune") for s in (0.5, 0.9)
             for seed in (0, 1)]  # fmt: skip
    drawn: list[tuple[tuple[float, ...], tuple[float, ...], str]] = []
    real = Axes.errorbar

    def record(self: Axes, x: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
        drawn.append((tuple(x), tuple(y), kwargs.get("marker")))
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", record)
    written = plot(rows, tmp_path)
    assert (tmp_path / "accuracy_vs_sparsity.png") in written
    arms = [d for d in drawn if d[1] == (0.8, 0.8)]  # the three tied arms (the correlation plot draws others)
    assert len(arms) == 3
    assert len({marker for _, _, marker in arms}) == 3  # each its own marker
    points = [(x, y) for xs, ys, _ in arms for x, y in zip(xs, ys)]
    assert len(set(points)) == len(points) == 6  # no marker exactly under another
    assert all(abs(x - s) < 1.5 for xs, _, _ in arms for x, s in zip(xs, (50, 90)))  # still at their sparsity
