"""Reliability, discovery (issue 12, items 17-20): clamps, frozen backbones, lazy buffers, honest errors."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import lawn


class _Tail(nn.Module):
    """Linear → op → Linear: ``op`` decides whether ``a.weight`` is in the final homogeneous sub-network."""

    def __init__(self, op) -> None:
        super().__init__()
        self.a, self.b, self.op = nn.Linear(4, 6), nn.Linear(6, 3), op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.op(self.a(x)))


@pytest.mark.parametrize(
    ("op", "homogeneous"),
    [
        (lambda h: torch.maximum(h, torch.ones(())), False),
        (lambda h: torch.minimum(h, torch.full((), 0.5)), False),
        (lambda h: torch.fmax(h, torch.ones_like(h)), False),
        (lambda h: torch.fmin(h, -torch.ones_like(h)), False),
        (lambda h: torch.where(h > 0.3, h, torch.zeros(())), False),
        (lambda h: torch.maximum(h, torch.zeros(())), True),  # a ReLU
        (lambda h: torch.maximum(h, 2 * h), True),  # both tracked
    ],
)
def test_item17_clamps_and_thresholds_break_homogeneity(op, homogeneous):
    torch.manual_seed(0)
    names = dict(lawn.final_homogeneous_params(_Tail(op), torch.randn(5, 4)))
    assert ("a.weight" in names) is homogeneous and "b.weight" in names


class _Adapter(nn.Module):
    """A frozen backbone under a trainable head; records ``requires_grad`` seen during the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)
        self.backbone.requires_grad_(False)
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(any(p.requires_grad for p in self.backbone.parameters()))
        return self.head(torch.relu(self.backbone(x)))


def test_item18_frozen_parameters_are_not_tracked_unless_asked():
    model = _Adapter()
    x = torch.randn(5, 4)
    assert [n for n, _ in lawn.final_homogeneous_params(model, x)] == ["head.weight"]
    assert model.seen == [False]  # no graph, no saved activations for the frozen backbone
    assert "not judged" in lawn.explain(model, x)
    text = lawn.explain(model, x, judge_frozen=True)
    assert model.seen[-1] is True and "frozen (requires_grad=False): not constrained" in text
    assert not any(p.requires_grad for p in model.backbone.parameters())


class _LazyTable(nn.Module):
    """Registers a positional table as a buffer during its first forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "table"):
            self.register_buffer("table", torch.arange(4.0))
        return self.head(torch.relu(self.bn(self.fc(x)) + self.table))


def test_item19_buffers_registered_during_the_forward_are_removed():
    model = _LazyTable()
    x = torch.randn(6, 4)
    assert [n for n, _ in lawn.final_homogeneous_params(model, x)] == ["head.weight"]
    assert "table" not in dict(model.named_buffers())
    assert [n for n, _ in lawn.params_feeding_normalization(model, x)] == ["fc.weight"]  # was KeyError
    assert "table" not in dict(model.named_buffers())


@dataclass
class _Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class _WithLoss(nn.Module):
    def __init__(self, dataclass_output: bool = False) -> None:
        super().__init__()
        self.fc, self.ln, self.head = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)
        self.dataclass_output = dataclass_output

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        hidden = self.ln(self.fc(x))
        logits = self.head(hidden)
        if self.dataclass_output:
            return _Output(logits=logits, hidden=hidden)
        out = {"logits": logits}
        if labels is not None:
            out = {"loss": nn.functional.cross_entropy(logits, labels), **out}
        return out


def test_item20_errors_say_what_is_wrong_and_the_output_can_be_named():
    model = _WithLoss()
    batch = {"x": torch.randn(5, 4), "labels": torch.tensor([0, 1, 2, 0, 1])}
    with pytest.raises(ValueError, match="the output includes a loss \\(loss\\).*output='logits'"):
        lawn.final_homogeneous_params(model, batch)
    assert [n for n, _ in lawn.final_homogeneous_params(model, batch, output="logits")] == ["head.weight"]
    dc = _WithLoss(dataclass_output=True)
    assert [n for n, _ in lawn.final_homogeneous_params(dc, torch.randn(5, 4), output="logits")] == ["head.weight"]
    assert [n for n, _ in lawn.final_homogeneous_params(dc, torch.randn(5, 4))] == ["head.weight"]  # was "no graph"
    with pytest.raises(ValueError, match="output='scores'.*no such part.*'logits'"):
        lawn.final_homogeneous_params(dc, torch.randn(5, 4), output="scores")
