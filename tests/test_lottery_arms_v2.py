"""The second lottery study's arms: late rewinding, random masks, learning-rate rewinding, fine-tuning at a
constant rate, every arm iterated by IMP, and the controls on the IMP ticket chain's masks."""

from __future__ import annotations

import json

import pytest
import torch

from lawn import pruning
from lawn.harness.lottery import LotterySpec, run_lottery
from lawn.harness.lottery_report import write_lottery_report
from lawn.harness.results import read_rows

BASE = {
    "dataset": "digits",
    "train_limit": 200,
    "test_limit": 60,
    "model": "lenet300",
    "optimizer": "sgd",
    "batch_size": 50,
    "epochs": 1,
}
V2 = {
    "lrs": [0.05],
    "seeds": [0],
    "sparsities": [0.5],
    "arms": ["ticket", "late_ticket", "reinit", "random_mask", "lr_rewind", "finetune", "finetune_dense"],
    "late_rewind_steps": 2,
    "finetune_schedule": "constant",
    "prune_layers": "all",
    "imp_lrs": [0.05],
    "imp_rounds": 2,
    "imp_rate": 0.2,
    "imp_arms": [
        "imp_ticket",
        "imp_late_ticket",
        "imp_lr_rewind",
        "imp_finetune",
        "imp_finetune_dense",
        "imp_reinit",
        "imp_random_mask",
    ],
    "base": BASE,
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_random_masks_keep_each_tensors_survivor_count_at_other_positions() -> None:
    like = {"a": torch.rand(30, 20) > 0.7, "b": torch.rand(50) > 0.2}
    masks = pruning.random_masks(like, seed=3)
    for name, mask in like.items():
        assert masks[name].dtype == torch.bool and masks[name].shape == mask.shape
        assert int(masks[name].sum()) == int(mask.sum())
    assert not torch.equal(masks["a"], like["a"])
    assert all(torch.equal(masks[k], pruning.random_masks(like, seed=3)[k]) for k in like)  # seeded
    assert not torch.equal(masks["a"], pruning.random_masks(like, seed=4)["a"])


def test_random_masks_refuse_a_non_bool_mask_by_name() -> None:
    with pytest.raises(TypeError, match=r"like\['w'\]"):
        pruning.random_masks({"w": torch.ones(3)})


def test_weight_correlation_with_masks_counts_only_the_survivors() -> None:
    w0 = torch.randn(40, 10)
    mask = torch.rand(40, 10) > 0.5
    trained = 2 * w0 * mask  # survivors only rescaled: perfectly correlated among themselves
    full = pruning.weight_correlation({"w": w0}, {"w": trained}, params=["w"])["global"]
    kept = pruning.weight_correlation({"w": w0}, {"w": trained}, params=["w"], masks={"w": mask})["global"]
    assert kept["numel"] == int(mask.sum()) and full["numel"] == 400
    assert kept["pearson"] == pytest.approx(1.0) and kept["cosine"] == pytest.approx(1.0)
    assert full["pearson"] < 0.9  # the zeros of the pruned weights pull the unmasked statistic down
    with pytest.raises(ValueError, match=r"masks\['w'\]: expected a bool tensor of shape \(40, 10\)"):
        pruning.weight_correlation({"w": w0}, {"w": trained}, params=["w"], masks={"w": mask[:4]})


def test_every_v2_arm_writes_its_row_with_its_masks_lr_schedule_and_correlation(tmp_path) -> None:
    results = tmp_path / "rows.jsonl"
    spec = LotterySpec.from_dict(V2)
    counts = run_lottery(spec, results)
    rows = read_rows(results)
    assert counts["done"] == counts["total"] == len(rows) == 1 + 7 + 7 * 2
    by = {(r["lottery"]["arm"], r["lottery"].get("round")): r for r in rows}
    lr = 0.05
    for (arm, _), r in by.items():
        lot = r["lottery"]
        assert lot["late_rewind_steps"] == 2 and lot["finetune_schedule"] == "constant"
        assert lot["prune_layers"] == "all"
        if arm == "dense":
            assert set(r["correlation"]) == {"initial", "rewind", "late"}
            continue
        assert r["arm_lr"] == pytest.approx(lr * 0.1 if arm in ("finetune", "imp_finetune") else lr)
        constant = arm in ("finetune", "finetune_dense", "imp_finetune", "imp_finetune_dense")
        assert r["arm_schedule"] == ("constant" if constant else "same")
        assert r["measured_sparsity"] == pytest.approx(lot["sparsity"], abs=0.01)
        assert 0 < r["correlation"]["start"]["global"]["numel"] < 784 * 300
    # every weight is pruned (prune_layers = "all"): the survivors are 80 % of all of LeNet's weights at round 1
    total = 64 * 300 + 300 * 100 + 100 * 10  # digits are 8×8
    assert by[("imp_ticket", 1)]["correlation"]["start"]["global"]["numel"] == pytest.approx(0.8 * total, abs=2)
    # the arms are different runs: late rewinding is not rewinding to init, LR rewinding is not fine-tuning
    train = {arm: by[(arm, None)]["train_losses"] for arm in V2["arms"]}
    assert train["late_ticket"] != train["ticket"]
    assert train["lr_rewind"] != train["finetune_dense"]
    states = torch.load(next((tmp_path / "rows.jsonl.states").glob("*.pt")), weights_only=True)
    assert set(states) == {"initial", "rewind", "late", "trained"}
    assert not torch.equal(states["late"]["1.weight"], states["initial"]["1.weight"])
    write_lottery_report(rows, tmp_path / "report")  # every new arm has its label in the report
    report = (tmp_path / "report" / "report.md").read_text()
    for label in ("IMP late ticket", "IMP random re-init", "IMP random mask", "IMP learning-rate rewinding"):
        assert f"| {label} | 36 % |" in report


def test_lr_rewind_is_fine_tuning_at_the_dense_rate_with_the_dense_schedule(tmp_path) -> None:
    """The same run, reached two ways: ``lr_rewind`` and the first study's ``finetune`` at scale 1 (schedule
    "same"). Bit-identical rows show the new arm is exactly the documented one."""
    common = {"lrs": [0.05], "seeds": [0], "sparsities": [0.5], "base": BASE}
    run_lottery(LotterySpec.from_dict({**common, "arms": ["lr_rewind"]}), tmp_path / "a.jsonl")
    run_lottery(LotterySpec.from_dict({**common, "arms": ["finetune"], "finetune_lr_scale": 1.0}), tmp_path / "b.jsonl")
    a = [r for r in read_rows(tmp_path / "a.jsonl") if r["lottery"]["arm"] != "dense"]
    b = [r for r in read_rows(tmp_path / "b.jsonl") if r["lottery"]["arm"] != "dense"]
    assert a[0]["train_losses"] == b[0]["train_losses"] and a[0]["test_metric"] == b[0]["test_metric"]


def test_the_first_studys_row_fields_are_unchanged_by_the_new_fields() -> None:
    """Committed rows keep their keys: the new fields enter a row only when set."""
    old = json.loads(json.dumps(LotterySpec.from_dict({"base": BASE}).study_fields()))
    assert old == {"scope": "global", "rewind_steps": 0, "finetune_lr_scale": 0.1}


@pytest.mark.parametrize(
    ("change", "culprit"),
    [
        ({"arms": ["late_ticket"], "late_rewind_steps": 0}, "late_rewind_steps = k > 0"),
        ({"arms": ["lr_rewind", "finetune_dense"], "finetune_schedule": "same"}, "finetune_schedule = 'constant'"),
        ({"imp_lrs": [0.05], "imp_arms": ["imp_reinit"]}, "add 'imp_ticket' to imp_arms"),
        ({"imp_arms": ["imp_bogus"]}, "imp_arms: unknown"),
        ({"finetune_schedule": "cosine"}, "finetune_schedule: expected one of"),
        ({"prune_layers": "most"}, "prune_layers: expected one of"),
        ({"imp_control_rounds": [3]}, "imp_control_rounds: expected rounds in 1 … imp_rounds = 2"),
    ],
)
def test_bad_v2_fields_are_refused_naming_the_fix(change, culprit) -> None:
    with pytest.raises(ValueError, match=culprit.replace("(", r"\(").replace(")", r"\)")):
        LotterySpec.from_dict({**V2, **change})


def test_a_late_rewind_step_past_the_dense_run_is_refused_before_training(tmp_path) -> None:
    spec = LotterySpec.from_dict({**V2, "late_rewind_steps": 10_000})  # 4 steps an epoch: known with the data
    with pytest.raises(ValueError, match="late_rewind_steps: 10000 is past the end of the dense run"):
        run_lottery(spec, tmp_path / "rows.jsonl")
    assert not (tmp_path / "rows.jsonl").exists() or not read_rows(tmp_path / "rows.jsonl")


def test_an_imp_only_study_trains_the_controls_only_at_the_declared_rounds(tmp_path) -> None:
    spec = LotterySpec.from_dict(
        {**V2, "arms": [], "imp_arms": ["imp_ticket", "imp_reinit", "imp_random_mask"], "imp_control_rounds": [2]}
    )
    run_lottery(spec, tmp_path / "rows.jsonl")
    rows = read_rows(tmp_path / "rows.jsonl")
    got = sorted((r["lottery"]["arm"], r["lottery"].get("round", 0)) for r in rows)
    assert got == [("dense", 0), ("imp_random_mask", 2), ("imp_reinit", 2), ("imp_ticket", 1), ("imp_ticket", 2)]
    by = {r["lottery"]["arm"]: r for r in rows if r["lottery"].get("round") == 2}
    # the controls train on the ticket chain's round-2 mask: the same sparsity
    assert by["imp_reinit"]["measured_sparsity"] == by["imp_ticket"]["measured_sparsity"]
    assert by["imp_random_mask"]["measured_sparsity"] == pytest.approx(by["imp_ticket"]["measured_sparsity"])
