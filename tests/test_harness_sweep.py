"""Sweeps end to end: grid expansion, resumable results, validation-based selection, report files."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lawn.harness.config import COMPARE_KEYS, RunConfig, load_mapping
from lawn.harness.report import write_report
from lawn.harness.results import read_rows
from lawn.harness.selection import select
from lawn.harness.sweep import SweepSpec, run_sweep

SRC = Path(__file__).resolve().parents[1] / "src"
SPEC = {
    "base": {"dataset": "digits", "train_limit": 120, "test_limit": 60, "width": 4, "epochs": 1},
    "optimizers": ["adam", "sgd"],
    "methods": ["plain", "wd", "lawn"],
    "batch_sizes": [32, 64],
    "lrs": {"adam": [1e-3, 1e-2], "sgd": [0.1]},
    "weight_decays": [1e-4, 1e-3],
    "seeds": [0, 1],
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "timing"} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The uninterrupted sweep's rows."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("ref") / "results.jsonl"
    counts = run_sweep(SweepSpec.from_dict(SPEC), path)
    torch.set_num_threads(threads)
    assert counts == {"done": 48, "skipped": 0, "total": 48}
    return read_rows(path)


def test_grid_expansion_gives_each_method_its_tuning_grid() -> None:
    spec = SweepSpec.from_dict(SPEC)
    runs = spec.expand()
    # per seed and batch size: adam 2 + 4 + 2, sgd 1 + 2 + 1 → 12; × 2 batch sizes × 2 seeds
    assert len(runs) == 48
    assert spec.tuned_axes("adam", "wd") == {"lr": (1e-3, 1e-2), "weight_decay": (1e-4, 1e-3)}
    assert spec.tuned_axes("sgd", "lawn") == {"lr": (0.1,)}
    assert [c.seed for c, _ in runs[:24]] == [0] * 24  # seeds are the outer loop
    assert all(c.weight_decay == 0.0 for c, _ in runs if c.method != "wd")
    lawn_grid = SweepSpec.from_dict({**SPEC, "grids": {"lawn": {"free_fraction": [0.1, 0.5]}}})
    assert lawn_grid.tuned_axes("adam", "lawn") == {"lr": (1e-3, 1e-2), "free_fraction": (0.1, 0.5)}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"bogus": 1}, r"unknown key\(s\) \['bogus'\]"),
        ({"base": {"dataset": "digits", "lr": 0.1}}, r"base sets \['lr'\]"),
        ({"base": {"dataset": "digits", "epoch": 1}}, r"unknown field\(s\) \['epoch'\]"),
        ({"lrs": {"adam": [0.1]}}, r"lrs: no list for optimizer\(s\) \['sgd'\]"),
        ({"lrs": []}, "lrs: expected a non-empty list"),
        ({"methods": ["plain", "nope"]}, "methods: unknown 'nope'"),
        ({"optimizers": ["adam", "rmsprop"], "lrs": [0.1]}, "optimizer: unknown 'rmsprop'"),
        ({"grids": {"lawn": {"lr": [1]}}}, "grids.lawn.lr: already set"),
        ({"grids": {"swa": {"free_fraction": [0.1]}}}, "method 'swa' is not in methods"),
        ({"grids": {"lawn": {"free_fraction": [2.0]}}}, "free_fraction: must be in"),
        ({"weight_decays": None}, "weight_decays: required"),
        ({"batch_sizes": [32.5]}, "batch_size: expected an integer"),
    ],
)
def test_bad_specs_are_named(change: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        SweepSpec.from_dict({k: v for k, v in {**SPEC, **change}.items() if v is not None})


def test_sweep_writes_rows_and_report(reference: list[dict], tmp_path: Path) -> None:
    assert len(reference) == 48 and len({r["key"] for r in reference}) == 48
    assert all(r["tuned"] in (["lr"], ["lr", "weight_decay"]) for r in reference)
    written = write_report(reference, tmp_path / "report", sources=["results.jsonl"])
    names = sorted(p.name for p in written)
    assert names == ["accuracy_vs_batch.png", "norms.png", "report.md"]
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| optimizer | method | batch 32 | batch 64 |" in text
    for optimizer in ("adam", "sgd"):
        for method in ("plain", "wd", "lawn"):
            assert f"| {optimizer} | {method} |" in text
    assert "| adam | wd | 32 | 4 |" in text  # the grid size of Adam+WD: 2 lrs × 2 weight decays


def test_resume_after_an_exception_gives_the_same_rows(reference: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    spec = SweepSpec.from_dict(SPEC)

    def crash_after_seven(row: dict) -> None:
        if len(read_rows(path)) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, path, on_row=crash_after_seven)
    assert len(read_rows(path)) == 7
    assert run_sweep(spec, path) == {"done": 41, "skipped": 7, "total": 48}
    assert strip(read_rows(path)) == strip(reference)


def test_resume_after_a_kill_mid_write_gives_the_same_rows(reference: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    script = f"""
import os, signal, torch
torch.set_num_threads(1)
from lawn.harness.sweep import SweepSpec, run_sweep
spec = SweepSpec.from_dict({json.dumps(SPEC)})
count = [0]
def kill_after_five(row):
    count[0] += 1
    if count[0] == 5:
        with open({str(path)!r}, "ab") as f:
            f.write(b'{{"key":"half a line, as if killed in the middle of a wr')
        os.kill(os.getpid(), signal.SIGKILL)
run_sweep(spec, {str(path)!r}, on_row=kill_after_five)
"""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    assert not path.read_bytes().endswith(b"\n")
    assert len(read_rows(path)) == 5
    assert run_sweep(SweepSpec.from_dict(SPEC), path) == {"done": 43, "skipped": 5, "total": 48}
    assert strip(read_rows(path)) == strip(reference)
    assert b"half a line" not in path.read_bytes()


def row(method: str, lr: float, seed: int, val: float | None, test: float | None, diverged: bool = False) -> dict:
    config = {
        "dataset": "digits",
        "optimizer": "adam",
        "method": method,
        "batch_size": 32,
        "lr": lr,
        "seed": seed,
    }
    config["weight_decay"] = 0.0
    return {
        "key": f"{method}{lr}{seed}",
        "config": config,
        "tuned": ["lr"],
        "metric": "accuracy",
        "val_metric": val,
        "test_metric": test,
        "diverged": diverged,
    }


def test_selection_uses_validation_not_test() -> None:
    rows = [
        row("plain", 0.1, 0, val=0.80, test=0.99),  # best test, worse validation: not chosen
        row("plain", 0.1, 1, val=0.82, test=0.97),
        row("plain", 0.01, 0, val=0.90, test=0.70),
        row("plain", 0.01, 1, val=0.88, test=0.74),
        row("plain", 0.01, 2, val=0.89, test=0.72),
    ]
    (s,) = select(rows)
    assert s.chosen == {"lr": 0.01} and s.grid_size == 2 and s.seeds == 3
    assert s.test_mean == pytest.approx(0.72) and s.test_std == pytest.approx(0.02)
    assert s.val_mean == pytest.approx(0.89)


def test_diverged_seeds_count_as_zero() -> None:
    rows = [
        row("lawn", 1.0, 0, val=0.95, test=0.9),
        row("lawn", 1.0, 1, val=None, test=None, diverged=True),
        row("lawn", 0.1, 0, val=0.6, test=0.6),
        row("lawn", 0.1, 1, val=0.6, test=0.6),
    ]
    (s,) = select(rows)
    assert s.chosen == {"lr": 0.1} and s.diverged == 0
    (s,) = select(rows[:2])
    assert s.diverged == 1 and s.test_mean == pytest.approx(0.45)


SPECS = sorted((SRC.parent / "docs" / "sweeps").glob("*.toml"))
LOTTERY_SPECS = [p for p in SPECS if p.name.startswith("study_lottery")]  # `lawn lottery` specs, not sweeps


@pytest.mark.parametrize("path", LOTTERY_SPECS, ids=lambda p: p.name)
def test_documented_lottery_specs_are_valid(path: Path) -> None:
    from lawn.harness.lottery import LotterySpec

    assert LotterySpec.load(path).seeds


@pytest.mark.parametrize("path", [p for p in SPECS if p not in LOTTERY_SPECS], ids=lambda p: p.name)
def test_documented_sweep_specs_are_valid(path: Path) -> None:
    spec = SweepSpec.load(path)
    sizes = {
        (o, m): len(list(itertools.product(*spec.tuned_axes(o, m).values())))
        for o in spec.optimizers
        for m in spec.methods
    }
    for o in spec.optimizers:  # the regularising methods (all but plain) get grids of the same size
        # (<= 1: a spec of plain runs only, e.g. a compute-matched control, has none)
        assert len({size for (o2, m), size in sizes.items() if o2 == o and m != "plain"}) <= 1
    assert len(spec.expand()) > 0


STUDY_SPECS = sorted((SRC.parent / "docs" / "sweeps").glob("*/*.toml"))  # pre-registered studies, a folder each


@pytest.mark.parametrize("path", STUDY_SPECS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pre_registered_study_specs_parse(path: Path) -> None:
    """Each file of a study folder is a sweep, lottery, unification or nested spec, or [[compare]] tables only."""
    from lawn.harness.config import COMPARE_KEYS, load_mapping
    from lawn.harness.lottery import LotterySpec
    from lawn.harness.verdicts import load_comparisons

    data = load_mapping(path)
    if set(data) <= set(COMPARE_KEYS):
        assert load_comparisons(path)
    elif path.parent.name.startswith("nested"):  # the nested study's driver (lawn.harness.nested_runs)
        from lawn.harness.nested_runs import NestedSpec

        assert NestedSpec.load(path).seeds
    elif "levels" in data:  # the unification study's driver
        from lawn.harness.studies.unification import UnificationSpec

        assert UnificationSpec.from_dict(data).seeds
    elif "arms" in data or "sparsities" in data or "imp_arms" in data:
        assert LotterySpec.load(path).seeds
    else:
        assert SweepSpec.load(path).expand()


def _sweep_configs(folder: Path) -> list[RunConfig]:
    specs = [p for p in sorted(folder.glob("*.toml")) if not set(load_mapping(p)) <= set(COMPARE_KEYS)]
    return [config for p in specs for config, _ in SweepSpec.load(p).expand()]


def _without_seed(config: RunConfig) -> str:
    return json.dumps({k: v for k, v in config.to_dict().items() if k != "seed"}, sort_keys=True)


def _groups(configs: list[RunConfig], arm: dict, by: tuple[str, ...]) -> set[tuple]:
    picked = [c for c in configs if all(getattr(c, k) == v for k, v in arm.items())]
    return {tuple(getattr(c, f) for f in by) for c in picked}


@pytest.mark.parametrize("folder", ["lawn_v3", "afan_v2"])
def test_every_declared_comparison_finds_both_arms_in_every_group_of_its_study(folder: str) -> None:
    """A comparison whose arm matches no run of the committed specs would only show as missing after hours of
    compute: each pre-registered comparison's a and b pick runs of the study's specs, in the same groups."""
    from lawn.harness.verdicts import load_comparisons

    path = SRC.parent / "docs" / "sweeps" / folder
    configs = _sweep_configs(path)
    compare_files = [p for p in sorted(path.glob("*.toml")) if set(load_mapping(p)) <= set(COMPARE_KEYS)]
    assert compare_files
    for comparison in load_comparisons(*compare_files):
        a, b = _groups(configs, comparison.a, comparison.by), _groups(configs, comparison.b, comparison.by)
        assert a and a == b, f"{comparison.name}: a's groups {sorted(a)} vs b's {sorted(b)}"


def test_lawn_v3_tunes_both_arms_of_every_declared_comparison_over_as_many_grid_points() -> None:
    """The verdicts refuse to decide arms tuned over different numbers of points ("unequal tuning budgets"), so a
    bracketing amendment that extends one arm's grid must extend every linked arm's: checked on the specs (whose
    rows all feed each report), per comparison and group, before any row is trained on them."""
    from lawn.harness.verdicts import load_comparisons

    path = SRC.parent / "docs" / "sweeps" / "lawn_v3"
    configs = _sweep_configs(path)
    compare_files = [p for p in sorted(path.glob("*.toml")) if set(load_mapping(p)) <= set(COMPARE_KEYS)]
    for comparison in load_comparisons(*compare_files):
        for group in _groups(configs, comparison.a, comparison.by):
            where = dict(zip(comparison.by, group))
            sizes = [
                len({_without_seed(c) for c in configs if all(getattr(c, k) == v for k, v in {**arm, **where}.items())})
                for arm in (comparison.a, comparison.b)
            ]
            assert sizes[0] == sizes[1], f"{comparison.name} at {where}: a has {sizes[0]} grid points, b {sizes[1]}"
