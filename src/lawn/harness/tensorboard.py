"""TensorBoard event files from result rows (``--log-dir DIR`` of ``lawn run``, ``sweep``, ``lottery``, ``demo``).

Events are written from a *finished* row, so the training loop is untouched and a row read back from a results
file gives the same curves: one directory per run, ``DIR/<row key>``, so ``tensorboard --logdir DIR`` shows a sweep's
runs side by side. The x-axis is the epoch (0 = before training). Per epoch, from the row's ``history``:

* ``loss/train``, ``loss/val``, ``loss/test``; ``<metric>/train`` (train accuracy), ``<metric>/val``,
  ``<metric>/test``; ``auc/val``, ``auc/test`` where the task has them;
* ``norms/logits`` (mean ‖logits‖ on the test set), ``norms/constrained`` (the final homogeneous weights together),
  ``norms/weights`` (all parameters), ``norms/constrained/<weight name>`` (each);
* ``lr``, ``tangential_step``, and for LAWN ``lawn/constrained`` (0 free, 1 constrained).

LAWN's switch is also a scalar, ``lawn/switch_epoch`` (the switch step in epochs, logged at the epoch where it
happened), and a text, ``lawn/switch``. The run's config is a text (``config``). Lottery rows, which carry only the
last batch's loss per epoch, give ``loss/train_last_batch``, and the final ``<metric>/val`` and ``<metric>/test``.

Needs the ``tensorboard`` package (the optional extra ``lawn[tensorboard]``); :func:`require` says so clearly.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from lawn._checks import is_number

EXTRA_HINT = "pip install 'lawn[tensorboard]' (from a clone: pip install -e '.[tensorboard]')"


def require() -> None:
    """Raise ``ValueError`` naming the extra when ``tensorboard`` is not installed (before anything trains)."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"--log-dir: TensorBoard is not installed; install the extra: {EXTRA_HINT}")


def run_dir(log_dir: str | Path, row: dict[str, Any]) -> Path:
    """The directory of ``row``'s events: ``log_dir/<row key>``."""
    return Path(log_dir) / str(row["key"])


def _number(value: Any) -> float | None:
    if not is_number(value):
        return None
    return float(value) if math.isfinite(value) else None


def scalars(row: dict[str, Any]) -> list[tuple[str, int, float]]:
    """``(tag, epoch, value)`` of every scalar :func:`write_run_events` writes for ``row`` (``None`` skipped)."""
    metric = str(row.get("metric") or "metric")
    out: list[tuple[str, int, float]] = []

    def add(tag: str, epoch: int, value: Any) -> None:
        number = _number(value)
        if number is not None:
            out.append((tag, epoch, number))

    history = row.get("history") or []
    for h in history:
        epoch = int(h["epoch"])
        for tag, name in (
            ("loss/train", "train_loss"),
            ("loss/val", "val_loss"),
            ("loss/test", "test_loss"),
            (f"{metric}/train", "train_accuracy"),
            (f"{metric}/val", "val_metric"),
            (f"{metric}/test", "test_metric"),
            ("auc/val", "val_auc"),
            ("auc/test", "test_auc"),
            ("norms/logits", "logit_norm"),
            ("norms/constrained", "constrained_norm"),
            ("norms/weights", "weight_norm"),
            ("lr", "lr"),
            ("tangential_step", "tangential_step"),
        ):
            add(tag, epoch, h.get(name))
        for name, value in (h.get("constrained_norms") or {}).items():
            add(f"norms/constrained/{name}", epoch, value)
        if h.get("phase") is not None:
            add("lawn/constrained", epoch, 1.0 if h["phase"] == "constrained" else 0.0)
    switch = _switch_epoch(row)
    if switch is not None:
        add("lawn/switch_epoch", math.ceil(switch), switch)
    if not history:  # a lottery row: the last batch's loss per epoch, the final metrics
        losses = row.get("train_losses") or []
        for epoch, value in enumerate(losses, start=1):
            add("loss/train_last_batch", epoch, value)
        last = len(losses)
        add(f"{metric}/val", last, row.get("val_metric"))
        add(f"{metric}/test", last, row.get("test_metric"))
    return out


def _switch_epoch(row: dict[str, Any]) -> float | None:
    step, per_epoch = row.get("switch_step"), row.get("steps_per_epoch")
    if step is None or not per_epoch:
        return None
    return float(step) / float(per_epoch)


def write_run_events(log_dir: str | Path, row: dict[str, Any]) -> Path:
    """Write ``row``'s curves as TensorBoard events into ``log_dir/<row key>`` (replacing that run's earlier
    events, so writing a row twice gives one set of curves); return the directory."""
    require()
    from torch.utils.tensorboard import SummaryWriter

    directory = run_dir(log_dir, row)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(directory))
    try:
        for tag, epoch, value in scalars(row):
            writer.add_scalar(tag, value, global_step=epoch)
        config = row.get("config")
        if config:
            writer.add_text("config", "```\n" + json.dumps(config, indent=1, sort_keys=True) + "\n```", 0)
        switch = _switch_epoch(row)
        if switch is not None:
            text = f"LAWN switched to the constrained phase after step {row['switch_step']} (epoch {switch:.2f})"
            writer.add_text("lawn/switch", text, math.ceil(switch))
    finally:
        writer.close()
    return directory


def write_missing(log_dir: str | Path, rows: list[dict[str, Any]]) -> int:
    """Write the events of every row of ``rows`` whose directory does not exist yet; return how many."""
    written = 0
    for row in rows:
        if not run_dir(log_dir, row).is_dir():
            write_run_events(log_dir, row)
            written += 1
    return written
