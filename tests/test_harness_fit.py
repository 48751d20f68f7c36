"""The harness's one training loop, ``lawn.harness.train.fit``: its hooks, its averages, its stops; and the rule
that every harness training (runs, lottery arms, studies) goes through it."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import lawn
import lawn.harness
from lawn.harness.train import EpochEnd, Step, StepLoss, fit

HARNESS = Path(lawn.harness.__file__).parent


def _problem(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    return model, [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]  # batches of 4, 4 and 2


def test_fit_runs_each_step_in_order_and_averages_the_data_loss_per_example() -> None:
    model, batches = _problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    seen: list[tuple[int, int, float, bool]] = []
    ends: list[EpochEnd] = []

    def loss(inputs: torch.Tensor, targets: torch.Tensor, step: int) -> StepLoss:
        data = nn.functional.cross_entropy(model(inputs), targets)
        return StepLoss(data + 0.5 * model.weight.square().sum(), data)  # trained on, not logged

    def after_step(step: Step) -> None:
        moved = not torch.equal(step.before, model.weight)  # before_step ran before the optimizer's step
        seen.append((step.number, len(step.targets), float(step.loss.data.detach()), moved))

    def end_epoch(end: EpochEnd) -> bool:
        ends.append(end)
        return False

    fitted = fit(
        model,
        optimizer,
        2,
        lambda: batches,
        loss,
        scheduler=scheduler,
        before_step=lambda: model.weight.detach().clone(),
        after_step=after_step,
        end_epoch=end_epoch,
    )
    assert (fitted.epochs_run, fitted.steps, fitted.stopped) == (2, 6, False)
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5, 6] and all(s[3] for s in seen)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 7)  # the scheduler stepped once a step
    for epoch, end in enumerate(ends, start=1):
        mine = seen[3 * (epoch - 1) : 3 * epoch]
        assert (end.epoch, end.steps, end.examples, end.blew_up) == (epoch, 3, 10, False)
        assert end.mean_loss == pytest.approx(sum(n * v for _, n, v, _ in mine) / 10)  # per example, not batch
        assert end.last_loss == pytest.approx(mine[-1][2])


def test_fit_stops_after_the_epoch_whose_end_asks_it() -> None:
    model, batches = _problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = lambda inputs, targets, step: nn.functional.cross_entropy(model(inputs), targets)
    fitted = fit(model, optimizer, 5, lambda: batches, loss, end_epoch=lambda end: end.epoch == 2)
    assert (fitted.epochs_run, fitted.steps, fitted.stopped) == (2, 6, True)


class _Refusing(torch.optim.SGD):
    """Writes NaN into the weights at the second step and refuses it, as LAWN does at a non-finite switch."""

    def __init__(self, params, finite: bool) -> None:
        super().__init__(params, lr=0.1)
        self.calls, self.finite = 0, finite

    def step(self, closure=None):  # noqa: ANN001, ANN201
        self.calls += 1
        if self.calls == 2:
            if not self.finite:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(math.nan)
            raise ValueError("refused")
        return super().step(closure)


def test_fit_ends_a_run_whose_weights_blew_up_and_raises_a_refusal_of_finite_weights() -> None:
    model, batches = _problem()
    ends: list[EpochEnd] = []
    loss = lambda inputs, targets, step: nn.functional.cross_entropy(model(inputs), targets)
    fitted = fit(model, _Refusing(model.parameters(), finite=False), 3, lambda: batches, loss, end_epoch=ends.append)
    assert (fitted.epochs_run, fitted.steps, fitted.stopped) == (1, 1, True)
    assert ends[0].blew_up and math.isnan(ends[0].mean_loss) and ends[0].steps == 1

    model, batches = _problem()
    with pytest.raises(ValueError, match="refused"):  # finite weights: a real error, not a divergence
        fit(model, _Refusing(model.parameters(), finite=True), 3, lambda: batches, loss)


def test_fit_ends_a_run_whose_norm_grew_too_large_to_freeze() -> None:
    model, batches = _problem()
    with torch.no_grad():
        model.weight.fill_(1e12)  # finite weights, but a norm LAWN refuses as a blow-up (NormDiverged)
    optimizer = lawn.LAWN(torch.optim.SGD(model.parameters(), lr=0.1), [("weight", model.weight)], free_steps=1)
    loss = lambda inputs, targets, step: nn.functional.cross_entropy(model(inputs), targets)
    ends: list[EpochEnd] = []
    fitted = fit(model, optimizer, 3, lambda: batches, loss, end_epoch=ends.append)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert (fitted.epochs_run, fitted.stopped) == (1, True) and ends[0].blew_up and math.isnan(ends[0].mean_loss)


def _calls(path: Path, attribute: str) -> list[int]:
    tree = ast.parse(path.read_text())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute
    ]


def test_the_harness_has_one_training_loop() -> None:
    """Runs, lottery arms and studies all train through ``train.fit``: no other harness file calls
    ``backward()`` or ``zero_grad()``; and the study drivers live with the harness, not in benchmarks/."""
    others = {
        str(path.relative_to(HARNESS)): lines
        for path in sorted(HARNESS.rglob("*.py"))
        if path.name != "train.py" or path.parent != HARNESS
        if (lines := _calls(path, "backward") + _calls(path, "zero_grad"))
    }
    assert others == {}
    benchmarks = HARNESS.parents[2] / "benchmarks"
    if benchmarks.is_dir():  # a source checkout
        assert not sorted(p.name for p in benchmarks.glob("*study*.py"))
    studies = {p.stem for p in (HARNESS / "studies").glob("*.py")} - {"__init__"}
    assert {"nested", "unification"} <= studies


def test_documented_study_and_benchmark_commands_name_what_exists() -> None:
    import importlib.util
    import re

    root = HARNESS.parents[2]
    if not (root / "docs").is_dir():
        pytest.skip("a source checkout's docs are needed")
    texts = [root / "README.md", *(root / "docs").glob("*.md"), *(root / "docs" / "results").rglob("*.sh")]
    texts += list((root / "docs" / "results").rglob("report.md"))
    scripts, modules = set(), set()
    for path in texts:
        text = path.read_text()
        scripts |= set(re.findall(r"python3? (benchmarks/[\w/]+\.py)", text))
        modules |= set(re.findall(r"python3? -m (lawn\.harness\.studies\.\w+)", text))
    assert {"benchmarks/step_overhead.py"} <= scripts and "lawn.harness.studies.nested" in modules
    assert [s for s in sorted(scripts) if not (root / s).is_file()] == []
    assert [m for m in sorted(modules) if importlib.util.find_spec(m) is None] == []
