"""Fresh seeds at a pilot's choice (``lawn.harness.pilot.PilotSelected``), on constructed pilot rows."""

import pytest

from lawn.harness.pilot import PilotSelected
from lawn.harness.sweep import SweepSpec

SPEC = {
    "base": {"dataset": "digits", "width": 4, "epochs": 1},
    "optimizers": ["sgd", "adam"],
    "methods": ["plain", "lawn"],
    "batch_sizes": [16, 64],
    "lrs": {"sgd": [0.01, 0.1, 1.0], "adam": [1e-3, 1e-2, 1e-1]},
    "grids": {"lawn": {"free_fraction": [0.1, 0.3]}},
}


def pilot_rows(best_lr: dict[str, float]) -> list[dict]:
    """One row per grid point (seed 0): validation peaks at ``best_lr[optimizer]``, free_fraction 0.3 best."""
    rows = []
    for config, tuned in SweepSpec.from_dict({**SPEC, "seeds": [0]}).expand():
        score = -abs(config.lr - best_lr[config.optimizer]) - (config.free_fraction != 0.3) * 1e-3
        rows.append({"config": config.to_dict(), "tuned": tuned, "val_metric": 0.9 + score, "test_metric": 0.5})
    return rows


def test_fresh_seeds_run_only_the_points_the_pilot_chose():
    main = SweepSpec.from_dict({**SPEC, "seeds": [1, 2, 3]})
    runs = PilotSelected(main, pilot_rows({"sgd": 0.1, "adam": 1e-2})).expand()
    assert len(runs) == 3 * 2 * 2 * 2  # seeds x optimizers x batch sizes x methods: one point each
    for config, tuned in runs:
        assert config.lr == {"sgd": 0.1, "adam": 1e-2}[config.optimizer]
        assert config.method == "plain" or config.free_fraction == 0.3
        assert tuned == (["lr", "free_fraction"] if config.method == "lawn" else ["lr"])
    assert sorted({c.seed for c, _ in runs}) == [1, 2, 3]


def test_choices_at_an_end_of_their_grid_are_named():
    main = SweepSpec.from_dict({**SPEC, "seeds": [1]})
    edges = PilotSelected(main, pilot_rows({"sgd": 1.0, "adam": 1e-2})).edges
    for batch in (16, 64):
        for method in ("plain", "lawn"):
            assert (
                f"sgd + {method} at batch {batch}: lr = 1 is the largest value of its grid [0.01, 0.1, 1]"
                in " ".join(edges)
            )
        assert (
            f"adam + lawn at batch {batch}: free_fraction = 0.3 is the largest value of its grid [0.1, 0.3]: "
            "optimum not bracketed" in edges
        )
    assert not any(line.startswith("adam") and "lr =" in line for line in edges)  # 1e-2: interior
    assert len(edges) == 2 * (3 + 1)  # per batch: sgd's two lrs and lawn's free_fraction; adam's free_fraction


def test_an_unfinished_or_missing_pilot_is_refused():
    main = SweepSpec.from_dict({**SPEC, "seeds": [1]})
    rows = pilot_rows({"sgd": 0.1, "adam": 1e-2})
    with pytest.raises(ValueError, match="covered 2 of the grid's 3 points"):
        PilotSelected(main, [r for r in rows if not (r["config"]["method"] == "plain" and r["config"]["lr"] == 1.0)])
    with pytest.raises(ValueError, match="no pilot row for the setting of adam"):
        PilotSelected(main, [r for r in rows if r["config"]["optimizer"] == "sgd"])


def test_lawn_sweep_runs_fresh_seeds_at_the_pilots_choice(tmp_path, capsys):
    """``lawn sweep SPEC --seeds 0`` is the pilot; ``--pilot ROWS --seeds 1,2`` trains only the chosen points."""
    import json

    from lawn.harness.cli import main

    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "base": {"dataset": "digits", "train_limit": 120, "test_limit": 40, "width": 4, "epochs": 1},
                "optimizers": ["adam"],
                "methods": ["plain"],
                "batch_sizes": [32],
                "lrs": [1e-4, 1e-2, 3e-2],
                "seeds": [7],
            }
        )
    )
    pilot, fresh = tmp_path / "pilot.jsonl", tmp_path / "fresh.jsonl"
    quiet = ["--no-progress", "--jobs", "1", "--threads", "1"]
    assert main(["sweep", str(spec), "--results", str(pilot), "--seeds", "0", *quiet]) == 0
    rows = [json.loads(line) for line in pilot.read_text().splitlines()]
    assert sorted(r["config"]["seed"] for r in rows) == [0, 0, 0]
    best = max(rows, key=lambda r: (r["val_metric"], -r["config"]["lr"]))["config"]["lr"]
    assert main(["sweep", str(spec), "--results", str(fresh), "--pilot", str(pilot), "--seeds", "1,2", *quiet]) == 0
    fresh_rows = [json.loads(line) for line in fresh.read_text().splitlines()]
    assert sorted((r["config"]["seed"], r["config"]["lr"]) for r in fresh_rows) == [(1, best), (2, best)]
    warned = "warning: the pilot's choice for adam + plain at batch 32: lr =" in capsys.readouterr().err
    assert warned == (best != 1e-2)  # an end of [1e-4, 1e-2, 3e-2] is named before the fresh seeds run
    assert main(["sweep", str(spec), "--results", str(fresh), "--seeds", "one", *quiet]) == 2
    assert "--seeds: expected comma-separated integers" in capsys.readouterr().err


def test_fresh_seeds_follow_a_pilot_that_tuned_a_late_field() -> None:
    import json

    from lawn.harness.pilot import PilotSelected
    from lawn.harness.sweep import SweepSpec

    spec = {"base": {"dataset": "digits", "width": 4, "epochs": 1}, "optimizers": ["sgd"], "methods": ["afan"],
            "lrs": [0.05], "grids": {"afan": {"afan_step_size": [0.001, 0.01, 0.1]}}}  # fmt: skip
    pilot = [
        json.loads(json.dumps({"config": c.to_dict(), "tuned": t, "val_metric": 0.9 - abs(c.afan_step_size - 0.01)}))
        for c, t in SweepSpec.from_dict({**spec, "seeds": [100]}).expand()
    ]
    runs = PilotSelected(SweepSpec.from_dict({**spec, "seeds": [0, 1]}), pilot).expand()
    assert [(c.seed, c.afan_step_size) for c, _ in runs] == [(0, 0.01), (1, 0.01)]


def test_a_pilot_over_other_values_of_the_same_size_is_refused():
    """A pilot with as many points as the grid, but at other values, chose over another grid: refused, never a
    silent choice outside the grid (no runs) or one the pilot never compared with the grid's other points."""
    other = {**SPEC, "lrs": {"sgd": [0.01, 0.1, 1.0], "adam": [1e-3, 1e-2, 3e-1]}}  # adam: 3e-1 for 1e-1
    main = SweepSpec.from_dict({**other, "seeds": [1]})
    for best in (1e-2, 1e-1):  # a choice inside the grid, and one outside it
        with pytest.raises(ValueError, match=r"covered 2 of the grid's 3 points \(none at lr=0\.3\)"):
            PilotSelected(main, pilot_rows({"sgd": 0.1, "adam": best}))


def test_a_pilot_over_a_larger_grid_is_refused_with_the_points_it_adds():
    smaller = {**SPEC, "lrs": {"sgd": [0.01, 0.1, 1.0], "adam": [1e-3, 1e-2]}}
    main = SweepSpec.from_dict({**smaller, "seeds": [1]})
    with pytest.raises(ValueError, match=r"outside this spec's grid \(lr=0\.1\)"):
        PilotSelected(main, pilot_rows({"sgd": 0.1, "adam": 1e-2}))
