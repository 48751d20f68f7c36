"""The second unification study: a spec of levels and arms on the harness's data and models, equal epochs per
arm, compression ratios from ``compression_report`` in every row, resumable rows, and LeNet-5."""

from __future__ import annotations

import json

import pytest
import torch

from lawn import unification as U
from lawn.harness.models import MODELS
from lawn.harness.results import read_rows
from lawn.harness.same_run import ResumeMismatch
from lawn.harness.studies import unification as study

SPEC = {
    "base": {"dataset": "digits", "train_limit": 300, "test_limit": 100, "model": "lenet300", "batch_size": 50},
    "levels": [
        {"name": "prune 0.9", "unify": 0.0, "prune": 0.9},
        {"name": "unify 0.5 + prune 0.45", "unify": 0.5, "prune": 0.45},
    ],
    "seeds": [0],
    "pre_epochs": 1,
    "mid_epochs": 2,
    "ft_epochs": 1,
    "gradual_stages": 2,
    "compare": [{"name": "x", "a": {"arm": "admm"}, "b": {"arm": "one_shot"}, "by": ["level"], "margin": 0.01}],
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_arm_and_level_writes_a_row_with_its_compression_and_resumes(tmp_path, report_with_spec) -> None:
    spec = study.UnificationSpec.from_dict(SPEC)
    results = tmp_path / "rows.jsonl"
    assert study.run_spec(spec, results) == {"done": 1 + 1 + 3 * 2, "total": 8}
    rows = read_rows(results)
    by = {(r["unification"]["arm"], r["unification"]["level"]): r for r in rows}
    assert set(by) == {("pretrained", "none"), ("dense", "none")} | {
        (a, lv) for a in ("one_shot", "gradual", "admm") for lv in ("prune 0.9", "unify 0.5 + prune 0.45")
    }
    for (arm, _), r in by.items():
        assert 0 <= r["test_metric"] <= 1 and r["config"]["epochs"] == 1 + 2 + 1
        if arm in ("pretrained", "dense"):
            assert r["bits_ratio"] == 1.0 and r["multiplies_ratio"] == 1.0
            continue
        assert r["unification"]["arm_epochs"] == 3  # equal epochs for every arm after pre-training
        # every Linear weight is blocked (64, 300 and 100 inputs): per 4 weights (128 fp32 bits) a dense block keeps
        # 128 bits, a unified one 32 + 4, a pruned one 0, plus a 2-bit kind; the biases (0.8 %) stay dense
        u, p = r["unification"]["unify"], r["unification"]["prune"]
        expected = (1 - u - p) + u * 36 / 128 + 2 / 128
        assert r["bits_ratio"] == pytest.approx(expected, abs=0.01)
        assert r["multiplies_ratio"] == pytest.approx((1 - u - p) + u / 4, abs=0.01)
        assert 0 <= r["acc_at_harden"] <= 1
    assert by[("admm", "prune 0.9")]["residual"] >= 0
    assert by[("gradual", "prune 0.9")]["unification"]["gradual_stages"] == 2
    assert "pre_lr" not in by[("dense", "none")]["unification"]  # recorded only when set (then the row keys change)
    assert study.run_spec(spec, results) == {"done": 0, "total": 8}  # resumed: nothing trains twice
    assert len(read_rows(results)) == 8
    # the driver's own rows go through `lawn report --spec` (one seed: every verdict says too few seeds)
    compare = '[[compare]]\nname = "x"\na = {arm = "admm"}\nb = {arm = "one_shot"}\nby = ["level"]\nmargin = 0.01\n'
    status, _, out = report_with_spec(read_rows(results), compare, "driver")
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert status == 0 and sorted(v["group"]["level"] for v in verdicts) == ["prune 0.9", "unify 0.5 + prune 0.45"]
    assert all(v["verdict"] == "inconclusive" and v["n"] == 1 for v in verdicts)


def _drop_last_rows(path, keep: int) -> list[dict]:
    """Keep the first ``keep`` rows of a results file (a driver stopped mid-seed); returns the dropped rows."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]))
    return [json.loads(line) for line in lines[keep:]]


def test_a_seed_resumed_without_its_saved_net_goes_on_only_if_retraining_gives_the_same_net(tmp_path) -> None:
    spec = study.UnificationSpec.from_dict(SPEC)
    results = tmp_path / "rows.jsonl"
    study.run_spec(spec, results)
    rows = read_rows(results)
    (digest,) = {r["pretrained_digest"] for r in rows}  # every row names the one net its seed started from
    states = tmp_path / "rows.jsonl.states"
    (saved,) = states.glob("*.pt")
    # stopped mid-seed and the saved net lost; on one machine re-training gives the same net, so the seed goes on
    dropped = _drop_last_rows(results, 5)
    saved.unlink()
    assert study.run_spec(spec, results) == {"done": 3, "total": 8}
    again = read_rows(results)
    assert {r["pretrained_digest"] for r in again} == {digest}
    assert [r["test_metric"] for r in again[5:]] == [r["test_metric"] for r in dropped]

    # another machine's re-training (here: a perturbed net in the saved file) is refused, and nothing is written
    _drop_last_rows(results, 5)
    state = torch.load(saved, weights_only=True)
    name = next(k for k in state if k.endswith("weight"))
    state[name] = torch.randn(state[name].shape, generator=torch.Generator().manual_seed(1))
    torch.save(state, saved)
    before = results.read_bytes()
    with pytest.raises(ResumeMismatch, match=r"seed 0: its 5 written row\(s\) came from another"):
        study.run_spec(spec, results)
    assert results.read_bytes() == before
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    assert study.main(["--spec", str(spec_file), "--results", str(results)]) == 2  # the CLI: a clear error, exit 2
    assert results.read_bytes() == before

    # rows written before the digest existed are checked through the seed's pretrained row
    for row in rows[:5]:
        row.pop("pretrained_digest")
    results.write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    with pytest.raises(ResumeMismatch, match=r"(val|test) [0-9.]+ in the rows, [0-9.]+ now"):
        study.run_spec(spec, results)
    saved.unlink()  # without the saved net the driver re-trains it here and gets the rows' net: the seed goes on
    assert study.run_spec(spec, results) == {"done": 3, "total": 8}


def test_gradual_projection_reaches_the_level_exactly_after_hardening() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    data = torch.randn(64, 16), torch.randint(0, 4, (64,))

    class Task:
        train_size, metric = 64, "accuracy"

        @staticmethod
        def epoch(batch_size, generator):
            order = torch.randperm(64, generator=generator)
            return ((data[0][i], data[1][i]) for i in order.split(batch_size))

        @staticmethod
        def loss(logits, targets):
            return torch.nn.functional.cross_entropy(logits, targets)

        @staticmethod
        def evaluate(model, split):
            return {"metric": float((model(data[0]).argmax(1) == data[1]).float().mean())}

    spec = study.UnificationSpec.from_dict({**SPEC, "base": {"dataset": "digits", "batch_size": 16}})
    config = spec.config(0)
    fields = {"arm": "gradual", "unify": 0.25, "prune": 0.5}
    out = study.run_arm_v2(spec, fields, model, Task(), config)
    assert 0 < out["bits_ratio"] < 1
    # the arm trains a copy: the pre-trained net that every arm of a seed shares is left as it was
    assert not list(U.hardened_layers(model))


@pytest.mark.parametrize(
    ("change", "culprit"),
    [
        ({"arms": ["dense", "magic"]}, "arms: unknown ['magic']"),
        ({"gradual_stages": 3}, "gradual_stages: 3 does not divide mid_epochs = 2"),
        ({"levels": [{"name": "too much", "unify": 0.6, "prune": 0.6}]}, "levels[0] ('too much')"),
        ({"base": {"lr": 0.1}}, "base sets ['lr']"),
        ({"rho_growth": 0.5}, "rho_growth: expected a number >= 1"),
        ({"pre_lr": 0}, "pre_lr: expected a positive number"),
        ({"levls": []}, "unknown key(s) ['levls']"),
    ],
)
def test_bad_specs_are_refused_naming_the_key(change, culprit) -> None:
    with pytest.raises(ValueError) as err:
        study.UnificationSpec.from_dict({**SPEC, **change})
    assert culprit in str(err.value)


def test_lenet5_reads_fashion_mnist_sized_images_and_every_layer_but_the_first_takes_blocks_of_4() -> None:
    model = MODELS["lenet5"].build((1, 28, 28), 10, 1)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    targets, skipped = U.selection.select_weights(model, U.BlockSpec(4))
    assert [name for name, _ in targets] == ["features.3", "classifier.0", "classifier.2", "classifier.4"]
    assert len(skipped) == 1 and "features.0" in skipped[0]  # 1 input channel: no block of 4 fits
    with pytest.raises(ValueError, match="too small"):
        MODELS["lenet5"].build((1, 8, 8), 10, 1)


def _frontier_row(arm: str, level: str, seed: int, acc: float, bits: float = 1.0, **extra: float) -> dict:
    return {
        "key": f"{arm}-{level}-{seed}",
        "experiment": "unification",
        "config": {"seed": seed},
        "unification": {"arm": arm, "level": level},
        "test_metric": acc,
        "bits_ratio": bits,
        "multiplies_ratio": bits / 2,
        **extra,
    }


def test_frontier_table_pairs_each_arm_with_the_dense_net_of_its_seed_and_orders_levels_by_storage(tmp_path) -> None:
    import json

    from lawn.harness.studies.unification_frontier import main, table

    rows = [_frontier_row("dense", "none", s, a) for s, a in ((0, 0.90), (1, 0.88), (2, 0.89))]
    rows += [
        _frontier_row("admm", "prune 0.9", s, a, 0.1, acc_at_harden=0.5, residual=0.02)
        for s, a in ((0, 0.89), (1, 0.88), (2, 0.87))
    ]
    rows += [_frontier_row("one_shot", "prune 0.5", s, a, 0.5) for s, a in ((0, 0.90), (1, 0.88), (2, 0.89))]
    text = table(rows)
    lines = text.splitlines()
    assert lines[2].startswith("| none | dense | 3 | 0.8900 ± 0.0100 |  | ")
    assert lines[3].startswith("| prune 0.5 | one_shot | 3 | 0.8900 ± 0.0100 | +0.00 (+0.00, +0.00) |")
    # admm − dense per seed: −1, 0, −2 points: mean −1, sd 1, 95 % half-width t(0.975, 2) / √3 = 2.48
    assert (
        lines[4] == "| prune 0.9 | admm | 3 | 0.8800 ± 0.0100 | -1.00 (-3.48, +1.48) | 0.5000 | 0.100 | 0.050 | 0.02 |"
    )
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(path), "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "frontier.md").read_text() == text
    assert (tmp_path / "f" / "frontier.png").stat().st_size > 0


def test_frontier_refuses_rows_of_two_studies_and_rows_without_a_dense_arm() -> None:
    from lawn.harness.studies.unification_frontier import table

    twice = [_frontier_row("dense", "none", 0, 0.9), _frontier_row("dense", "none", 0, 0.8)]
    with pytest.raises(ValueError, match="dense at 'none': seed 0 appears twice"):
        table(twice)
    with pytest.raises(ValueError, match="no dense rows"):
        table([_frontier_row("admm", "prune 0.9", 0, 0.9)])


def test_lawn_report_on_unification_rows_writes_the_frontier_and_the_verdicts(
    tmp_path, capsys, report_with_spec
) -> None:
    """``lawn report ROWS --spec SPEC`` on the driver's rows (which keep no per-epoch history): report.md with the
    frontier table, frontier.png and verdicts.json; rows of another kind mixed in are refused before writing."""
    from lawn.harness.cli import main

    rows = []
    for arm, level, bits, accs in (
        ("dense", "none", 1.0, (0.90, 0.88, 0.89)),
        ("admm", "prune 0.9", 0.1, (0.89, 0.88, 0.87)),
        ("one_shot", "prune 0.9", 0.1, (0.86, 0.85, 0.84)),
    ):
        for seed, acc in enumerate(accs):
            row = _frontier_row(arm, level, seed, acc, bits)
            row.update(config={"dataset": "d", "model": "lenet300", "optimizer": "adam", "lr": 3e-4, "seed": seed},
                       tuned=[], val_metric=acc, metric="accuracy")  # fmt: skip
            rows.append(row)
    spec = '[[compare]]\nname = "ADMM vs one-shot"\na = {arm = "admm"}\nb = {arm = "one_shot"}\nby = ["level"]\n'
    status, results, out = report_with_spec(rows, spec + "margin = 0.005\n")
    assert status == 0
    report = (out / "report.md").read_text()
    assert "| prune 0.9 | admm | 3 | 0.8800 ± 0.0100 | -1.00 (-3.48, +1.48) |" in report
    assert "## Verdicts" in report and (out / "frontier.png").stat().st_size > 0
    (verdict,) = json.loads((out / "verdicts.json").read_text())
    assert verdict["group"] == {"level": "prune 0.9"} and verdict["n"] == 3
    assert verdict["mean_diff"] == pytest.approx(0.03)

    sweep_row = {"key": "s", "config": {"seed": 0}, "history": [{"epoch": 1}], "test_metric": 0.9}
    results.write_text(results.read_text() + json.dumps(sweep_row) + "\n")
    capsys.readouterr()
    assert main(["report", str(results), "--out", str(tmp_path / "mixed")]) == 2
    assert "mix unification rows with other rows" in capsys.readouterr().err
    assert not (tmp_path / "mixed").exists()
