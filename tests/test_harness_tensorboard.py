"""``--log-dir``: each run's per-epoch history as TensorBoard events, one directory per row key, read back here with
TensorBoard's own event reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from lawn.harness import tensorboard as tb  # noqa: E402
from lawn.harness.cli import build_parser, main  # noqa: E402
from lawn.harness.results import read_rows  # noqa: E402

TINY = ["--set", "train_limit=120", "--set", "test_limit=60", "--set", "width=4"]
QUIET = ["--threads", "1", "--no-progress", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("restore_threads")  # the commands set torch's threads (conftest.py)


def read_events(directory: Path) -> EventAccumulator:
    (events,) = directory.glob("events.out.tfevents.*")  # one file per run, also when written again
    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return accumulator


def curve(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def text(accumulator: EventAccumulator, tag: str) -> str:
    (event,) = accumulator.Tensors(f"{tag}/text_summary")
    return event.tensor_proto.string_val[0].decode()


def test_run_log_dir_writes_the_rows_history(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    row_file, log_dir = tmp_path / "row.json", tmp_path / "tb"
    argv = ["run", "--dataset", "digits", "--method", "lawn", "--epochs", "3", "--batch-size", "32", *TINY, *QUIET]
    assert main([*argv, "--json", str(row_file), "--log-dir", str(log_dir)]) == 0
    assert f"tensorboard --logdir {log_dir}" in capsys.readouterr().out
    row = json.loads(row_file.read_text())
    events = read_events(log_dir / row["key"])
    history = row["history"]
    for tag, name in [
        ("loss/train", "train_loss"),
        ("loss/val", "val_loss"),
        ("loss/test", "test_loss"),
        ("accuracy/train", "train_accuracy"),
        ("accuracy/val", "val_metric"),
        ("accuracy/test", "test_metric"),
        ("norms/logits", "logit_norm"),
        ("norms/constrained", "constrained_norm"),
        ("norms/weights", "weight_norm"),
        ("lr", "lr"),
        ("tangential_step", "tangential_step"),
    ]:
        expected = [(h["epoch"], h[name]) for h in history if h[name] is not None]
        assert [step for step, _ in curve(events, tag)] == [step for step, _ in expected], tag
        assert [value for _, value in curve(events, tag)] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    (weight,) = row["constrained"]
    assert curve(events, f"norms/constrained/{weight}")[-1][1] == pytest.approx(
        history[-1]["constrained_norms"][weight], rel=1e-6
    )
    phases = [value for _, value in curve(events, "lawn/constrained")]
    assert phases == [float(h["phase"] == "constrained") for h in history] and phases[-1] == 1.0
    ((step, switch),) = curve(events, "lawn/switch_epoch")
    assert switch == pytest.approx(row["switch_step"] / row["steps_per_epoch"]) and step >= switch
    assert "switched to the constrained phase after step" in text(events, "lawn/switch")
    assert json.loads(text(events, "config").strip("`\n")) == row["config"]


def test_sweep_log_dir_has_one_directory_per_row_and_fills_in_on_resume(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    base = {"dataset": "digits", "train_limit": 120, "test_limit": 60, "width": 4, "epochs": 1}
    spec.write_text(json.dumps({"base": base, "methods": ["plain", "lawn"], "lrs": [1e-3], "seeds": [0]}))
    results, log_dir = tmp_path / "r.jsonl", tmp_path / "tb"
    argv = ["sweep", str(spec), "--results", str(results), "--jobs", "1", "--log-dir", str(log_dir), *QUIET]
    assert main(argv) == 0
    rows = read_rows(results)
    assert sorted(p.name for p in log_dir.iterdir()) == sorted(row["key"] for row in rows)
    for row in rows:
        final = curve(read_events(log_dir / row["key"]), "accuracy/test")[-1]
        assert final == (1, pytest.approx(row["test_metric"], rel=1e-6))
    gone = log_dir / rows[0]["key"]
    for path in gone.iterdir():
        path.unlink()
    gone.rmdir()
    assert main(argv) == 0  # nothing to train; the missing run's events are written from its row
    assert curve(read_events(gone), "loss/train")[-1][1] == pytest.approx(rows[0]["history"][-1]["train_loss"])


def test_a_row_written_twice_gives_one_set_of_curves(tmp_path: Path) -> None:
    row = {"key": "k1", "metric": "accuracy", "history": [{"epoch": 0, "train_loss": None, "lr": 0.1}]}
    tb.write_run_events(tmp_path, row)
    tb.write_run_events(tmp_path, {**row, "history": [{"epoch": 0, "train_loss": 2.5, "lr": 0.2}]})
    events = read_events(tmp_path / "k1")
    assert curve(events, "lr") == [(0, pytest.approx(0.2))] and curve(events, "loss/train") == [(0, 2.5)]


def test_a_lottery_row_gives_its_losses_and_final_metrics(tmp_path: Path) -> None:
    row = {"key": "lot", "experiment": "lottery", "metric": "accuracy", "train_losses": [2.0, 1.5, 1.25]}
    row |= {"val_metric": 0.5, "test_metric": 0.625, "config": {"lr": 0.1}}
    events = read_events(tb.write_run_events(tmp_path, row))
    assert curve(events, "loss/train_last_batch") == [(1, 2.0), (2, 1.5), (3, 1.25)]
    assert curve(events, "accuracy/test") == [(3, 0.625)] and curve(events, "accuracy/val") == [(3, 0.5)]


@pytest.mark.parametrize("command", ["run", "sweep", "lottery", "demo"])
def test_every_training_command_takes_log_dir(command: str) -> None:
    positional = {"sweep": ["s", "--results", "r"], "lottery": ["s", "--results", "r"]}.get(command, [])
    assert build_parser().parse_args([command, *positional, "--log-dir", "d"]).log_dir == "d"
    assert build_parser().parse_args([command, *positional]).log_dir is None  # off by default


def test_log_dir_without_tensorboard_names_the_extra_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real = tb.importlib.util.find_spec
    monkeypatch.setattr(tb.importlib.util, "find_spec", lambda name: None if name == "tensorboard" else real(name))
    argv = ["run", "--dataset", "digits", "--epochs", "1", *TINY, *QUIET, "--log-dir", str(tmp_path / "tb")]
    assert main([*argv, "--results", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "lawn run: error: --log-dir: TensorBoard is not installed" in err and "lawn[tensorboard]" in err
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "tb").exists()


def test_lottery_log_dir_writes_every_row_of_the_study(tmp_path: Path) -> None:
    spec = {"lrs": [0.05], "seeds": [0], "sparsities": [0.5], "arms": ["ticket"]}
    spec["base"] = {"dataset": "digits", "train_limit": 200, "test_limit": 60, "model": "lenet300"}
    spec["base"] |= {"optimizer": "sgd", "batch_size": 50, "epochs": 1}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    results, log_dir = tmp_path / "r.jsonl", tmp_path / "tb"
    argv = ["lottery", str(tmp_path / "spec.json"), "--results", str(results), "--log-dir", str(log_dir), *QUIET]
    assert main(argv) == 0
    rows = read_rows(results)
    assert len(rows) >= 2 and sorted(p.name for p in log_dir.iterdir()) == sorted(row["key"] for row in rows)
    for row in rows:
        assert curve(read_events(log_dir / row["key"]), "accuracy/test")[-1][1] == pytest.approx(row["test_metric"])
