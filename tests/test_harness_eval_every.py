"""``eval_every``: validation and test metrics every k-th epoch, before training and at the end; training is the
same step for step, and the config key of a run at the default is what it was before the field existed."""

from __future__ import annotations

import pytest
import torch

from lawn.harness.config import RunConfig
from lawn.harness.train import train

torch.set_num_threads(1)

TINY = {"dataset": "digits", "model": "resnet", "train_limit": 96, "test_limit": 48, "width": 4, "epochs": 5}
METRICS = ("val_loss", "val_metric", "test_loss", "test_metric", "logit_norm")


@pytest.mark.parametrize(
    "method",
    [
        {"method": "plain"},
        # the random-direction control draws from the global RNG every step: evaluation must not move it
        {"method": "afan", "afan_direction": "random", "afan_steps": 2, "afan_step_size": 0.05},
        {"method": "lawn", "optimizer": "sgd", "lr": 0.05},
    ],
    ids=["plain", "afan_random", "lawn"],
)
def test_skipped_evaluations_leave_training_and_final_metrics_unchanged(method: dict) -> None:
    every = train(RunConfig.from_dict({**TINY, **method}))
    sparse = train(RunConfig.from_dict({**TINY, **method, "eval_every": 2}))
    assert [h["epoch"] for h in sparse["history"]] == [0, 1, 2, 3, 4, 5]
    for dense_h, sparse_h in zip(every["history"], sparse["history"]):
        assert sparse_h["train_loss"] == dense_h["train_loss"]
        assert sparse_h["weight_norm"] == dense_h["weight_norm"]
        evaluated = sparse_h["epoch"] in (0, 2, 4, 5)  # every 2nd, before training and the last
        for key in METRICS:
            assert (sparse_h[key] == dense_h[key]) if evaluated else sparse_h[key] is None, (sparse_h["epoch"], key)
    for key in ("val_metric", "test_metric", "diverged", "epochs_run"):
        assert sparse[key] == every[key]


def test_a_run_that_stops_early_is_evaluated_at_the_epoch_it_stops() -> None:
    fields = {**TINY, "model": "mlp", "optimizer": "sgd", "lr": 1e30, "warmup_fraction": 0.0, "eval_every": 4}
    row = train(RunConfig.from_dict(fields))
    assert row["diverged"] and row["epochs_run"] < TINY["epochs"]
    assert row["history"][-1]["val_metric"] is not None  # measured, though not a 4th epoch


def test_eval_every_is_checked_and_its_default_keeps_old_keys() -> None:
    for bad in (0, -2):
        with pytest.raises(ValueError, match="eval_every: must be >= 1"):
            RunConfig(eval_every=bad)
    with pytest.raises((TypeError, ValueError), match="eval_every"):
        RunConfig.from_dict({"eval_every": 1.5})
    base = RunConfig.from_dict(TINY)
    assert RunConfig.from_dict({**TINY, "eval_every": 1}).key() == base.key()  # rows written before it resume
    assert RunConfig.from_dict({**TINY, "eval_every": 3}).key() != base.key()
