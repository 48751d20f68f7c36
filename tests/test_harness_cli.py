"""The ``lawn`` command: each subcommand on tiny data, and clear errors for bad options and files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from lawn.harness.cli import main
from lawn.harness.results import read_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "train_limit=120", "--set", "test_limit=60", "--set", "width=4"]
QUIET = ["--threads", "1", "--no-progress", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("restore_threads")  # the commands set torch's threads (conftest.py)


def test_console_script_is_declared() -> None:
    if sys.version_info < (3, 11):
        pytest.importorskip("tomllib")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["lawn"] == "lawn.harness.cli:main"


def test_run_prints_history_and_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results, row_file = tmp_path / "r.jsonl", tmp_path / "row.json"
    argv = ["run", "--dataset", "digits", "--method", "lawn", "--epochs", "2", "--batch-size", "32", *TINY]
    assert main([*argv, *QUIET, "--results", str(results), "--json", str(row_file)]) == 0
    out = capsys.readouterr().out
    assert "val_accuracy" in out and "final: val accuracy" in out and "constrained" in out
    (row,) = read_rows(results)
    assert row["config"]["method"] == "lawn" and len(row["history"]) == 3
    assert json.loads(row_file.read_text())["key"] == row["key"]


def test_run_reads_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "run.toml"
    config.write_text('dataset = "mnist1d"\ndata_options = { num_samples = 200 }\nwidth = 4\nepochs = 1\n')
    assert main(["run", "--config", str(config), *QUIET]) == 0
    assert "final: val accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "--dataset", "digits", "--method", "lawnn"], "method: unknown 'lawnn'"),
        (["run", "--dataset", "digits", "--set", "epochs=many"], "epochs: expected an integer"),
        (["run", "--dataset", "digits", "--set", "speed=9"], r"unknown field\(s\) \['speed'\]"),
        (["run", "--config", "nowhere.json"], "config file not found: nowhere.json"),
        (["run", "--dataset", "fashion_mnist", "--data-dir", "/no/such/dir"], "data directory not found"),
        (["run", "--dataset", "digits", "--threads", "0"], "--threads: must be >= 1"),
        (["run", "--dataset", "digits", "--device", "tpu"], "device"),
        (["report", "missing.jsonl"], "results file not found: missing.jsonl"),
        (["sweep", "nospec.json", "--results", "r.jsonl"], "config file not found: nospec.json"),
        (["demo", "--epochs", "0"], "--epochs: must be >= 1"),
        (["run", "--dataset", "digits", "--set", "free_fracton=0.1"], "did you mean 'free_fraction'"),
        (["run", "--dataset", "digits", "--device", "cude"], r"--device: unknown 'cude' \(did you mean 'cuda'\?\)"),
        (["run", "--dataset", "digits", "--optimizer", "adm"], "optimizer: unknown 'adm' \\(did you mean 'adam'"),
        (["run", "--dataset", "digits", "--batch-size", "1"], "batch_size: 1 cannot train model 'mlp'"),
        (["demo", "--data-dir", "/no/such/fashion"], "--data-dir: /no/such/fashion is not a directory"),
        (["demo", "--data-dir", "."], "--data-dir: . lacks the IDX file"),
    ],
)
def test_errors_name_the_culprit(
    argv: list[str],
    match: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lawn {argv[0]}: error:")
    assert re.search(match, err), err


@pytest.mark.parametrize(
    "argv",
    [["run", "--bogus"], ["demo", "--dataset", "imagenet"], ["frobnicate"], [], ["run", "--lr", "fast"]],
)
def test_bad_options_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: lawn" in capsys.readouterr().err


def test_help_lists_fields_defaults_and_valid_values(capsys: pytest.CaptureFixture) -> None:
    for command in ("run", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "free_fraction = 0.2" in text and "batch_size = 128" in text
        assert re.search(r"optimizer = \"adam\"\s+one of: .*lamb", text) and 'method = "plain"' in text
        assert "--threads" in text and "default: 1" in text
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "default: 1" in text and "torch's choice" not in text and "fashion_mnist" in text


def test_run_echoes_the_resolved_config_and_the_switch(capsys: pytest.CaptureFixture) -> None:
    argv = ["run", "--dataset", "digits", "--method", "lawn", "--epochs", "2", "--batch-size", "32", *TINY]
    assert main([*argv, *QUIET]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("run: digits (108 training examples), model mlp (width 4), adam + lawn")
    assert "2 epochs = 8 steps" in first and "LAWN switches after step 2 (free_fraction 0.2)" in first


def test_report_accepts_no_progress_and_shows_one_seed_without_a_spread(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    results = tmp_path / "r.jsonl"
    argv = ["run", "--dataset", "digits", "--epochs", "1", "--batch-size", "32", *TINY, *QUIET]
    assert main([*argv, "--results", str(results)]) == 0
    assert main(["report", str(results), "--out", str(tmp_path / "rep"), "--no-progress"]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "(n = 1)" in report and "± 0.0000" not in report
    assert "(accuracy_vs_batch.png)" in report and "(norms.png)" in report


def test_demo_accepts_the_hyphenated_fashion_mnist_spelling() -> None:
    from lawn.harness.cli import build_parser

    assert build_parser().parse_args(["demo", "--dataset", "fashion-mnist"]).dataset == "fashion_mnist"


def test_sweep_and_report_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "base": {"dataset": "digits", "train_limit": 120, "test_limit": 60, "width": 4, "epochs": 1},
                "optimizers": ["adam"],
                "methods": ["plain", "lawn"],
                "batch_sizes": [32, 64],
                "lrs": [1e-3],
                "seeds": [0, 1],
            }
        )
    )
    results, out = tmp_path / "r.jsonl", tmp_path / "report"
    assert main(["sweep", str(spec), "--results", str(results), "--dry-run"]) == 0
    assert "8 runs, 0 already" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--results", str(results), *QUIET]) == 0
    assert "8 run(s) done now" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--results", str(results), *QUIET]) == 0
    assert "0 run(s) done now, 8 already" in capsys.readouterr().out
    assert main(["report", str(results), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "| adam | lawn |" in report and "| final train loss | final ‖logits‖ |" in report
    assert (out / "report.md").is_file() and (out / "accuracy_vs_batch.png").is_file()
    assert main(["sweep", str(spec), "--results", str(results), "--set", "epochz=1"]) == 2
    assert "spec.json" in capsys.readouterr().err


def test_demo_end_to_end_on_tiny_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["demo", "--dataset", "digits", "--epochs", "1", "--seeds", "1", "--batch-sizes", "32", "128", "--jobs", "1"]
    argv += ["--lrs", "0.001", "--train-limit", "200", "--test-limit", "100", "--out", str(tmp_path), *QUIET]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "What this run shows:" in out and "- batch 32: test accuracy Adam" in out
    assert "| adam | plain |" not in out and "](" not in out  # the reading, not the raw markdown
    assert {p.name for p in tmp_path.iterdir()} == {
        "results.jsonl",  # and no lock file left behind
        "report.md",
        "accuracy_vs_batch.png",
        "norms.png",
    }
    report = (tmp_path / "report.md").read_text()
    title, blank, reading = report.splitlines()[:3]
    assert title.startswith("# ") and blank == "" and reading == "## What this run shows"
    assert report.index("- batch 32: test accuracy Adam") < report.index("| adam | plain |")
    assert len(read_rows(tmp_path / "results.jsonl")) == 4
    assert main([*argv, "--seeds", "2"]) == 0  # resumes: only seed 1 is new; the report covers both seeds
    out = capsys.readouterr().out
    assert "4 run(s) trained, 4 reused" in out
    assert "What this run shows:" in out and "- batch 32: test accuracy Adam" in out and "mechanism:" in out
    assert "Next:" in out and str(tmp_path / "norms.png") in out
    assert main([*argv, "--epochs", "2", "--batch-sizes", "64"]) == 0  # other options: report only those
    assert "- batch 64:" in capsys.readouterr().out and "batch 32 |" not in (tmp_path / "report.md").read_text()


def test_report_only_and_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "base": {"dataset": "digits", "train_limit": 120, "test_limit": 60, "width": 4, "epochs": 1},
                "optimizers": ["adam"],
                "methods": ["plain", "lawn"],
                "batch_sizes": [32],
                "lrs": [1e-3],
                "seeds": [0],
                "grids": {"lawn": {"free_fraction": [0.1, 0.5]}},
            }
        )
    )
    results = tmp_path / "r.jsonl"
    assert main(["sweep", str(spec), "--results", str(results), *QUIET]) == 0
    capsys.readouterr()
    assert main(["report", str(results), "--out", str(tmp_path / "a"), "--only", "method=lawn"]) == 0
    selected = capsys.readouterr().out
    assert "| adam | lawn |" in selected and "| adam | plain |" not in selected
    assert "free_fraction=" in selected  # tuned over: the chosen value is shown
    assert (
        main(
            ["report", str(results), "--out", str(tmp_path / "b"), "--only", "method=lawn", "--split", "free_fraction"]
        )
        == 0
    )
    split = capsys.readouterr().out
    assert "(free_fraction=0.1)" in split and "(free_fraction=0.5)" in split
    assert main(["report", str(results), "--out", str(tmp_path / "c"), "--only", "nope=1"]) == 2
    assert "--only 'nope=1'" in capsys.readouterr().err


def test_demo_verdict_reads_noise_and_real_differences() -> None:
    from types import SimpleNamespace

    from lawn.harness.demo import verdict

    def sel(method: str, batch: int, mean: float, std: float, seeds: int = 3) -> SimpleNamespace:
        row = {"history": [{"train_loss": 0.01, "logit_norm": 10.0}]}
        setting = {"method": method, "batch_size": batch}
        stats = {"test_mean": mean, "test_std": std, "seeds": seeds}
        return SimpleNamespace(setting=setting, metric="accuracy", rows=[row], **stats)

    text = verdict([sel("plain", 128, 0.90, 0.01), sel("lawn", 128, 0.905, 0.01),
                    sel("plain", 2048, 0.80, 0.002), sel("lawn", 2048, 0.85, 0.003)], "out")  # fmt: skip
    assert "batch 128: test accuracy Adam 0.9000, Adam+LAWN 0.9050 (+0.50 points): level within seed noise" in text
    assert "batch 2048:" in text and "LAWN better, beyond the seed spread (±0.0030)" in text
    one = verdict([sel("plain", 128, 0.9, 0.0, seeds=1), sel("lawn", 128, 0.8, 0.0, seeds=1)], "out")
    assert "one seed only" in one


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture) -> None:
    import lawn

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lawn {lawn.__version__}"


def test_demo_help_states_the_epochs_the_demo_runs(capsys: pytest.CaptureFixture) -> None:
    from lawn.harness.demo import IMAGE_DEFAULTS, settings

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{settings('mnist1d')['epochs']} on MNIST-1D" in text
    assert (
        f"{IMAGE_DEFAULTS['epochs']} on Fashion-MNIST" in text and f"{settings('digits')['epochs']} on digits" in text
    )


def test_run_states_the_learning_rate_without_a_null_scaling_and_notes_a_full_batch(
    capsys: pytest.CaptureFixture,
) -> None:
    argv = ["run", "--dataset", "digits", "--epochs", "1", "--batch-size", "256", *TINY, *QUIET]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "lr 0.001, batch 256" in first and "scaling" not in first
    assert "not less than the 108 training examples: every step is full-batch, 1 per epoch" in first
    assert main([*argv, "--set", "lr_scaling=sqrt", "--batch-size", "32"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "(sqrt scaling of 0.001 from batch 128), batch 32," in first and "full-batch" not in first


def test_demo_and_sweep_share_one_rule_for_the_default_jobs(capsys: pytest.CaptureFixture) -> None:
    from lawn.harness.cli import build_parser
    from lawn.harness.parallel import JOBS_CAP, default_jobs

    parser = build_parser()
    assert parser.parse_args(["demo"]).jobs is None and parser.parse_args(["sweep", "s", "--results", "r"]).jobs is None
    assert [default_jobs("cpu", cores=n) for n in (1, 2, 3, 64)] == [1, 2, 3, JOBS_CAP]
    assert default_jobs("cuda", gpu_count=3) == 3 and default_jobs("cuda:1", gpu_count=3) == 1
    for command in ("demo", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"(default: one per CPU core, at most {JOBS_CAP}; on CUDA one per visible GPU;" in text


def test_sigterm_stops_the_demo_cleanly(tmp_path: Path) -> None:
    """SIGTERM (a scheduler's or ``kill``'s) to the demo, its workers busy: exit 130, the resume hint, no
    multiprocessing warnings, and nothing left running."""
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    argv = ["demo", "--dataset", "digits", "--epochs", "5000", "--seeds", "1", "--batch-sizes", "32", "--jobs", "2"]
    argv += ["--lrs", "0.001", "--out", str(tmp_path), *QUIET]
    cli = "import sys; from lawn.harness.cli import main; sys.exit(main(sys.argv[1:]))"
    demo = subprocess.Popen(
        [sys.executable, "-c", cli, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert demo.stdout is not None and demo.stdout.readline().startswith("demo: digits")
        time.sleep(3.0)  # the two workers are training
        demo.send_signal(signal.SIGTERM)
        _, err = demo.communicate(timeout=60)  # EOF: the workers and helper processes are gone too
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, err
    assert "lawn demo: interrupted; rerun the same command to resume" in err
    assert "leaked" not in err and "Traceback" not in err, err


def test_demo_notes_the_batch_sizes_that_are_the_whole_training_set() -> None:
    from lawn.harness.demo import full_batch_note

    assert full_batch_note([128, 2048], 9000) is None
    note = full_batch_note([128, 2048, 4096], 1294)
    assert note is not None and "batch size 2048, 4096 is not less than the 1294 training examples" in note
    assert "full-batch" in note
