"""The A-FAN study's table and plot: arms named from their configs, mean ± std over seeds, mixed settings refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lawn.harness.afan_tables import arm_name, main, table


def _row(method: str, seed: int, clean: float, **config: Any) -> dict[str, Any]:
    base = {"method": method, "seed": seed, "lr": 0.05, "epochs": 40, "afan_step_size": 0.00075}
    base.update({"afan_bn": "freeze", "afan_direction": "adversarial", **config})
    return {
        "config": base,
        "key": f"{method}-{seed}-{json.dumps(config, sort_keys=True)}",
        "test_metric": clean,
        "noisy_test_metric": clean - 0.1,
        "blurred_test_metric": clean - 0.2,
        "history": [{"train_accuracy": 0.5}, {"train_accuracy": 0.99 + 0.005 * seed}],
        "timing": {"seconds": 100.0 + 10 * seed, "step_seconds": 0.05 if method == "plain" else 0.2},
    }


def test_arm_names_tell_the_study_s_arms_apart() -> None:
    assert arm_name({"method": "plain", "epochs": 210}) == "plain, 210 epochs"
    assert arm_name({"method": "afan", "afan_bn": "update", "afan_direction": "adversarial"}).startswith("A-FAN, BN up")
    assert arm_name({"method": "afan", "afan_bn": "freeze", "afan_direction": "adversarial"}) == "A-FAN, BN frozen"
    assert arm_name({"method": "afan", "afan_bn": "update", "afan_direction": "random"}) == "random-direction noise"
    assert arm_name({"method": "input_adv"}) == "input-space PGD"
    position = {"method": "afan", "afan_bn": "freeze", "afan_direction": "adversarial", "afan_normalize": "position"}
    assert arm_name(position) == "A-FAN, BN frozen, position normalization"


def test_numbers_a_row_lacks_show_as_a_dash_not_a_crash(tmp_path) -> None:
    bare = _row("plain", 0, 0.8)
    for key in ("noisy_test_metric", "blurred_test_metric", "history", "timing"):
        del bare[key]
    diverged = {**_row("plain", 1, 0.8), "test_metric": None}
    text = table([bare, diverged])
    assert "| plain, 40 epochs | lr 0.05 | 2 | 0.8000 ± 0.0000 | 0.7000 ± 0.0000 | 0.6000 ± 0.0000 |" in text
    only_clean = _row("plain", 0, 0.8)
    del only_clean["noisy_test_metric"], only_clean["blurred_test_metric"]
    assert "| 0.8000 ± 0.0000 | – | – | 0.9900 ± 0.0000 | 100 | 0.050 (1.00×) |" in table([only_clean])
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(only_clean) + "\n")
    assert main([str(path), "--plot", str(tmp_path / "a.png")]) == 0  # one panel, clean accuracy only


def test_the_table_averages_each_arm_over_seeds_and_the_cli_writes_table_and_plot(tmp_path) -> None:
    rows = [_row("plain", 0, 0.80), _row("plain", 1, 0.90), _row("afan", 0, 0.85, afan_bn="update")]
    text = table(rows)
    assert "| plain, 40 epochs | lr 0.05 | 2 | 0.8500 ± 0.0707 | 0.7500 ± 0.0707 | 0.6500 ± 0.0707 |" in text
    assert "0.9925 ± 0.0035 | 105 | 0.050 (1.00×) |" in text  # final (not first) train accuracy; wall seconds
    assert text.rstrip().endswith("| 0.200 (4.00×) |")  # per step, against plain's
    assert "| A-FAN, BN updated (as released) | lr 0.05, step 0.00075 | 1 | 0.8500 ± 0.0000 |" in text
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(path), "--out", str(tmp_path / "t.md"), "--plot", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "t.md").read_text() == text
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_two_grid_points_of_one_arm_are_refused_by_name(tmp_path, capsys) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [_row("plain", 0, 0.8), _row("plain", 1, 0.8, lr=0.1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit):
        main([str(path)])
    assert "plain, 40 epochs: rows of different settings (lr)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no rows"):
        table([])
