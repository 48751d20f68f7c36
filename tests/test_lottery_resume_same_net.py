"""A resumed lottery study re-trains nets its written rows depend on (a lost dense states file; a chain replayed
up to its first missing round). It goes on only where the re-trained net is the one its row came from."""

from __future__ import annotations

import json

import pytest
import torch

from lawn.harness.cli import main
from lawn.harness.lottery import LotterySpec, run_lottery
from lawn.harness.results import read_rows
from lawn.harness.same_run import ResumeMismatch, state_digest
from tests.test_lottery_arms_v2 import BASE

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = {
    "lrs": [0.05],
    "seeds": [0],
    "arms": [],
    "imp_lrs": [0.05],
    "imp_rounds": 2,
    "imp_rate": 0.2,
    "imp_arms": ["imp_ticket"],
    "base": BASE,
}


def _keep(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_state_digest_changes_with_any_bit_and_reads_modules_and_state_dicts() -> None:
    net = torch.nn.Linear(3, 2)
    digest = state_digest(net)
    assert digest == state_digest(net.state_dict()) and len(digest) == 16
    with torch.no_grad():
        net.weight[0, 0] = torch.nextafter(net.weight[0, 0], torch.tensor(2.0))
    assert state_digest(net) != digest


def test_a_chain_replayed_on_resume_goes_on_only_from_the_same_nets(tmp_path) -> None:
    spec = LotterySpec.from_dict(SPEC)
    results = tmp_path / "rows.jsonl"
    run_lottery(spec, results)
    rows = read_rows(results)
    assert [(r["lottery"]["arm"], r["lottery"].get("round", 0)) for r in rows] == [
        ("dense", 0),
        ("imp_ticket", 1),
        ("imp_ticket", 2),
    ]
    assert len({r["weights_digest"] for r in rows}) == 3  # each row names the net it trained

    # stopped before round 2: the chain trains round 1 again, gets the same net on this machine, and goes on
    _keep(results, rows[:2])
    assert run_lottery(spec, results)["done"] == 1
    assert read_rows(results)[2]["weights_digest"] == rows[2]["weights_digest"]

    # round 1 written by a machine whose training differs (here: its row's digest): refused, nothing written
    _keep(results, [rows[0], {**rows[1], "weights_digest": "0" * 16}])
    before = results.read_bytes()
    with pytest.raises(ResumeMismatch, match=r"lr 0.05, seed 0: imp_ticket round 1 was trained again on resume"):
        run_lottery(spec, results)
    assert results.read_bytes() == before
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    assert main(["lottery", str(spec_file), "--results", str(results), "--no-progress"]) == 2  # a clear error
    assert results.read_bytes() == before


def test_a_lost_dense_states_file_is_trained_again_and_must_give_the_rows_net(tmp_path) -> None:
    spec = LotterySpec.from_dict(SPEC)
    results = tmp_path / "rows.jsonl"
    run_lottery(spec, results)
    rows = read_rows(results)
    (states,) = (tmp_path / "rows.jsonl.states").glob("*.pt")
    states.unlink()
    _keep(results, rows[:2])
    assert run_lottery(spec, results)["done"] == 1  # same machine: the same dense net, the chain goes on
    assert states.is_file()

    states.unlink()
    _keep(results, [{**rows[0], "weights_digest": "f" * 16}, rows[1]])
    with pytest.raises(ResumeMismatch, match=r"seed 0: the dense net was trained again on resume"):
        run_lottery(spec, results)
    assert not states.exists()  # the other net's states are not saved in place of the lost ones

    # rows written before the digest existed: checked through their validation and test metrics
    _keep(results, [{k: v for k, v in rows[0].items() if k != "weights_digest"}, rows[1]])
    assert run_lottery(spec, results)["done"] == 1
    states.unlink()
    old = {k: v for k, v in rows[0].items() if k != "weights_digest"}
    _keep(results, [{**old, "test_metric": old["test_metric"] + 0.5}, rows[1]])
    with pytest.raises(ResumeMismatch, match=r"test [0-9.]+ in the row, [0-9.]+ now"):
        run_lottery(spec, results)


def test_max_points_stops_on_a_point_boundary_and_the_rerun_finishes_the_rest(tmp_path, capsys) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**SPEC, "seeds": [0, 1], "imp_rounds": 1}))
    results = tmp_path / "rows.jsonl"
    args = ["lottery", str(spec_file), "--results", str(results), "--no-progress"]
    assert main([*args, "--max-points", "0"]) == 2 and not results.exists()  # refused before anything trains
    assert "--max-points 0" in capsys.readouterr().err

    assert main([*args, "--max-points", "1"]) == 0
    assert "2 left: rerun the same command to go on" in capsys.readouterr().out
    first = read_rows(results)
    assert {r["config"]["seed"] for r in first} == {0} and len(first) == 2  # one whole point: dense + round 1
    assert main([*args, "--max-points", "1"]) == 0
    rows = read_rows(results)
    assert rows[:2] == first and {r["config"]["seed"] for r in rows[2:]} == {1} and len(rows) == 4
    capsys.readouterr()
    assert main(args) == 0  # nothing left
    out = capsys.readouterr().out
    assert "0 row(s) done now, 4 already in" in out and "left" not in out
