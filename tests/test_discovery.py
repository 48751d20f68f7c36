"""Discovery of the final homogeneous sub-network: the zoo, state preservation, explain, errors, LAWN."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lawn
from lawn.discovery.final_homogeneous import discover
from tests.discovery_zoo import ZOO, BNResNet, DataDependent, SigmoidOutput, TwoTower, relu_mlp

ZOO_IDS = [entry.name for entry in ZOO]


def names(named: list[tuple[str, torch.Tensor]]) -> list[str]:
    return [name for name, _ in named]


# ---------------------------------------------------------------- the zoo: exact tails in forward order
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("entry", ZOO, ids=ZOO_IDS)
def test_zoo_tail_exact_names(entry, mode: str) -> None:
    model, x = entry.build()
    model.train(mode == "train")
    named = lawn.final_homogeneous_params(model, x)
    assert names(named) == entry.tail
    params = dict(model.named_parameters())
    assert all(p is params[name] and isinstance(p, nn.Parameter) for name, p in named)


class Fn(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Reshaped(nn.Module):
    """Applies a (B, C, L) layer such as InstanceNorm1d to (B, 16) features as (B, 4, 4)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.view(len(x), 4, 4)).flatten(1)


BREAKING = {
    "batch_norm": lambda: nn.BatchNorm1d(16),
    "layer_norm": lambda: nn.LayerNorm(16),
    "group_norm": lambda: nn.GroupNorm(4, 16),
    "instance_norm": lambda: Reshaped(nn.InstanceNorm1d(4, affine=True)),
    "rms_norm": lambda: nn.RMSNorm(16),
    "F.normalize": lambda: Fn(lambda x: F.normalize(x, dim=1)),
    "clamp_min_0.1": lambda: Fn(lambda x: x.clamp(min=0.1)),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softmax": lambda: nn.Softmax(dim=1),
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "relu6": nn.ReLU6,
    "mish": nn.Mish,
}
HOMOGENEOUS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "prelu": nn.PReLU,
    "identity": nn.Identity,
    "dropout": lambda: nn.Dropout(0.3),
    "clamp_min_0": lambda: Fn(lambda x: x.clamp(min=0)),
    "max_pool": lambda: Reshaped(nn.MaxPool1d(3, stride=1, padding=1)),
    "avg_pool": lambda: Reshaped(nn.AvgPool1d(3, stride=1, padding=1)),
}


@pytest.mark.parametrize("op", list(BREAKING), ids=list(BREAKING))
def test_non_homogeneous_layer_cuts_the_tail_above_it(op: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), BREAKING[op](), nn.Linear(16, 3))
    assert names(lawn.final_homogeneous_params(model.train(), torch.randn(5, 6))) == ["2.weight"]


@pytest.mark.parametrize("op", list(HOMOGENEOUS), ids=list(HOMOGENEOUS))
def test_homogeneous_layer_keeps_the_tail_going(op: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), HOMOGENEOUS[op](), nn.Linear(16, 3))
    assert names(lawn.final_homogeneous_params(model.train(), torch.randn(5, 6))) == ["0.weight", "2.weight"]


def test_fused_attention_kernel_is_linear_in_v_only() -> None:
    model, x = next(e for e in ZOO if e.name == "attention_sdpa").build()
    table = lawn.explain(model, x)
    assert "ScaledDotProductFlashAttentionForCpu" in table  # the fused kernel ran, not the decomposed math
    assert names(lawn.final_homogeneous_params(model, x)) == ["v.weight", "o.weight", "head.weight"]


def test_sigmoid_output_raises_and_suggests_logits() -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"Sigmoid.*logits"):
        lawn.final_homogeneous_params(SigmoidOutput(), torch.randn(4, 6))


def test_softmax_probabilities_raise_naming_softmax() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(relu_mlp(), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match=r"Softmax in 1 \(Softmax\)"):
        lawn.final_homogeneous_params(model, torch.randn(4, 6))


def test_tied_weight_used_before_and_after_norm_is_excluded_and_explained() -> None:
    model, x = next(e for e in ZOO if e.name == "tied_lm").build()
    found = {v.name: v for v in discover(model, x).parameters}
    embed = found["embed.weight"]
    assert not embed.in_tail and embed.aliases == ("head.weight",)
    assert "homogeneous ops and also through NativeLayerNorm in norm (LayerNorm)" in embed.reason
    table = lawn.explain(model, x)
    assert "[tied: also head.weight]" in table


def test_weight_shared_by_two_modules_is_returned_once_under_its_first_name() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
    b.weight = a.weight
    model = nn.Sequential(nn.LayerNorm(8), a, nn.ReLU(), b)
    assert names(lawn.final_homogeneous_params(model, torch.randn(3, 8))) == ["1.weight"]


def test_mixed_paths_weight_is_excluded_and_explain_says_why() -> None:
    model, x = next(e for e in ZOO if e.name == "mixed_paths").build()
    line = next(row for row in lawn.explain(model, x).splitlines() if row.startswith("stem.weight"))
    assert " out " in line and "also through NativeLayerNorm in norm (LayerNorm)" in line


def test_data_dependent_control_flow_follows_the_branch_taken() -> None:
    torch.manual_seed(0)
    model = DataDependent()
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)  # why discovery walks the autograd graph instead
    x = torch.rand(4, 6) * 0.5
    assert names(lawn.final_homogeneous_params(model, x)) == ["block.weight", "out.weight"]
    assert names(lawn.final_homogeneous_params(model, -x)) == ["stem.weight", "block.weight", "out.weight"]


def test_keyword_inputs_and_list_inputs_give_the_same_tail() -> None:
    torch.manual_seed(0)
    model, users, items = TwoTower(), torch.randint(0, 20, (6,)), torch.randint(0, 30, (6,))
    expected = ["mlp.0.weight", "mlp.2.weight"]
    assert names(lawn.final_homogeneous_params(model, {"users": users, "items": items})) == expected
    assert names(lawn.final_homogeneous_params(model, [users, items])) == expected


# ---------------------------------------------------------------- strict mode and biases
def test_biases_are_in_the_tail_but_never_returned() -> None:
    torch.manual_seed(0)
    found = {v.name: v for v in discover(relu_mlp(), torch.randn(3, 6)).parameters}
    assert found["0.bias"].in_tail and not found["0.bias"].constrained
    assert found["0.weight"].in_tail and found["0.weight"].constrained


def test_strict_treats_a_bias_as_breaking_homogeneity_below_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False)
    )
    x = torch.randn(4, 6)
    assert names(lawn.final_homogeneous_params(model, x)) == ["0.weight", "2.weight", "4.weight"]
    assert names(lawn.final_homogeneous_params(model, x, strict=True)) == ["2.weight", "4.weight"]
    assert "adding a bias or constant (strict=True) in 0 (Linear)" in lawn.explain(model, x, strict=True)


def test_strict_with_a_biased_head_finds_nothing_and_says_strict() -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="strict=True"):
        lawn.final_homogeneous_params(relu_mlp(), torch.randn(4, 6), strict=True)


def test_strict_rejects_a_residual_sum_with_the_raw_input() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(x + F.relu(self.a(x)))  # x + f(x) is not homogeneous in a (strictly)

    torch.manual_seed(0)
    model, x = Residual(), torch.randn(3, 6)
    assert names(lawn.final_homogeneous_params(model, x)) == ["a.weight", "b.weight"]
    assert names(lawn.final_homogeneous_params(model, x, strict=True)) == ["b.weight"]


# ---------------------------------------------------------------- the model is left exactly as it was
def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "rng": torch.get_rng_state(),
    }


def _assert_same(before: dict, model: nn.Module) -> None:
    after = _snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert torch.equal(after["rng"], before["rng"])
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key  # bit-identical, BN running stats included


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_model_mode_buffers_flags_and_rng_are_restored(mode: str) -> None:
    torch.manual_seed(0)
    model, x = BNResNet(), torch.randn(4, 3, 8, 8)
    model.train(mode != "eval")
    if mode == "mixed":
        model.layer1.eval()
    model.stem[0].weight.requires_grad_(False)
    before = _snapshot(model)
    with torch.no_grad():  # discovery must still build a graph
        assert names(lawn.final_homogeneous_params(model, x)) == ["fc.weight"]
        lawn.explain(model, x)
        lawn.check_homogeneity(model, [model.fc.weight], x)
    _assert_same(before, model)


def test_dropout_masks_do_not_advance_the_global_rng() -> None:
    model, x = next(e for e in ZOO if e.name == "vgg").build()
    model.train()
    before = _snapshot(model)
    lawn.final_homogeneous_params(model, x)
    _assert_same(before, model)


def test_state_is_restored_when_the_forward_raises() -> None:
    class Fails(BNResNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.stem(x)  # updates BN statistics, then fails
            raise RuntimeError("boom")

    model, x = Fails().train(), torch.randn(4, 3, 8, 8)
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        lawn.final_homogeneous_params(model, x)
    _assert_same(before, model)


def test_frozen_weight_is_judged_but_not_returned() -> None:
    torch.manual_seed(0)
    model, x = relu_mlp(), torch.randn(3, 6)
    model[2].weight.requires_grad_(False)
    assert names(lawn.final_homogeneous_params(model, x)) == ["0.weight", "4.weight"]
    assert "frozen (requires_grad=False)" in lawn.explain(model, x)
    for p in model[4].parameters():
        p.requires_grad_(False)
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        lawn.final_homogeneous_params(model, x)


# ---------------------------------------------------------------- explain
def test_explain_table_lists_every_parameter_with_verdict_and_reason() -> None:
    torch.manual_seed(0)
    model, x = BNResNet(), torch.randn(4, 3, 8, 8)
    table = lawn.explain(model, x)
    rows = {line.split()[0]: line for line in table.splitlines()[3:] if line and "." in line.split()[0]}
    assert set(rows) == {name for name, _ in model.named_parameters()}
    assert table.splitlines()[0] == (
        "BNResNet (train mode, strict=False): 1 of 7 weights in the final homogeneous sub-network"
    )
    assert rows["fc.weight"].split()[2] == "in" and "Addmm → output" in rows["fc.weight"]
    assert rows["fc.bias"].split()[2] == "tail"
    assert rows["layer1.conv1.weight"].split()[2] == "out"
    assert "NativeBatchNorm in layer1.bn1 (BatchNorm2d)" in rows["layer1.conv1.weight"]


def test_explain_does_not_raise_for_a_model_without_a_tail() -> None:
    torch.manual_seed(0)
    table = lawn.explain(SigmoidOutput(), torch.randn(4, 6))
    assert "0 of 3 weights" in table and "Sigmoid in SigmoidOutput.forward" in table


def test_parameter_the_output_does_not_use_is_reported() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"used": nn.Linear(4, 2), "unused": nn.Linear(4, 2)})
    model.forward = lambda x: model["used"](x)  # type: ignore[method-assign]
    table = lawn.explain(model, torch.randn(3, 4))
    assert "does not reach the output for these inputs" in table.splitlines()[-3]


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors() -> None:
    torch.manual_seed(0)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        lawn.final_homogeneous_params(lambda x: x, torch.randn(2, 6))
    with pytest.raises(TypeError, match="example_inputs"):
        lawn.final_homogeneous_params(relu_mlp(), "not a tensor")
    with pytest.raises(TypeError, match="strict"):
        lawn.final_homogeneous_params(relu_mlp(), torch.randn(2, 6), strict="yes")


def test_detached_output_raises() -> None:
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).detach()

    with pytest.raises(ValueError, match="does not depend on any parameter"):
        lawn.final_homogeneous_params(Detached(), torch.randn(2, 6))


# ---------------------------------------------------------------- discovered weights feed LAWN and train
def test_discovered_tail_feeds_lawn_and_trains() -> None:
    model, _ = next(e for e in ZOO if e.name == "vgg").build()
    torch.manual_seed(1)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    tail = lawn.final_homogeneous_params(model, x[:4])
    opt = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), tail, free_steps=3)
    assert (
        names(opt.constrained_parameters)
        == names(tail)
        == [
            "classifier.0.weight",
            "classifier.3.weight",
            "classifier.6.weight",
        ]
    )
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert opt.phase == "constrained"
    for name, p in tail:
        torch.testing.assert_close(p.norm().float(), opt.target_norms[name], rtol=1e-5, atol=0)
    assert losses[-1] < losses[0]


def test_an_example_batch_with_labels_is_told_to_pass_the_inputs_only() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    with pytest.raises(TypeError, match=r"Pass the model's inputs only, not the labels: e.g. x, not \(x, y\)"):
        lawn.final_homogeneous_params(model, (x, y))
    assert [name for name, _ in lawn.final_homogeneous_params(model, x)] == ["3.weight"]


# ---- clamps, frozen backbones, lazy buffers, honest errors
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
def test_clamps_and_thresholds_break_homogeneity(op, homogeneous):
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


def test_frozen_parameters_are_not_tracked_unless_asked():
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


def test_buffers_registered_during_the_forward_are_removed():
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


def test_errors_say_what_is_wrong_and_the_output_can_be_named():
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
