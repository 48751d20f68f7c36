"""LAWN composed with other wrappers and bases: nesting, refusals, forwarding, the switch's state per constraint."""

import pytest
import torch

import lawn
from lawn_helpers import BNNet, assert_same_tree, batches, roundtrip, snapshot, train_step


def _model(seed: int = 0) -> BNNet:
    torch.manual_seed(seed)
    return BNNet()


def test_wrs_and_lawn_nest_on_one_base_and_keep_their_own_state():
    model = _model()
    base = torch.optim.Adam(model.parameters(), lr=1e-2)
    wrs = lawn.WRS(base, [("stem.weight", model.stem.weight)])
    opt = lawn.LAWN(wrs, model.tail(), free_steps=2)
    for xb, yb in batches(6):
        train_step(model, opt, xb, yb)
        assert lawn.norms(model.stem.weight).item() == pytest.approx(1.0, rel=1e-5)  # drifted to 1.44
    assert wrs.phase == "constrained" and wrs.steps == 6 and opt.phase == "constrained" and opt.steps == 6
    for name, p in model.tail():
        assert lawn.norms(p).item() == pytest.approx(opt.target_norms[name].item(), rel=1e-5)
    group = opt.state_dict()["param_groups"][0]
    assert group["lawn_fixed_target"] == 1.0 and group["lawn2_fixed_target"] is None
    model_b = _model(seed=1)
    base_b = torch.optim.Adam(model_b.parameters(), lr=1e-2)
    opt_b = lawn.LAWN(lawn.WRS(base_b, [("stem.weight", model_b.stem.weight)]), model_b.tail(), free_steps=2)
    opt_b.load_state_dict(roundtrip(opt.state_dict()))
    assert opt_b.steps == 6 and opt_b.base.steps == 6
    assert_same_tree(dict(opt.target_norms), dict(opt_b.target_norms))


def test_two_wrappers_side_by_side_are_refused():
    model = _model()
    base = torch.optim.Adam(model.parameters(), lr=1e-2)
    wrs = lawn.WRS(base, [("stem.weight", model.stem.weight)])
    with pytest.raises(ValueError, match="already wrapped by WRS.*LAWN\\(WRS\\(base"):
        lawn.LAWN(base, model.tail(), free_steps=2)
    assert wrs.param_groups[0]["lawn_fixed_target"] == 1.0 and "lawn2_steps" not in base.param_groups[0]


def test_freeze_twice_is_a_no_op():
    model = _model()
    opt = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), model.tail(), free_steps=10, target_scale=0.5)
    before = lawn.norms(model.head.weight).item()
    opt.freeze()
    opt.freeze()
    assert lawn.norms(model.head.weight).item() == pytest.approx(0.5 * before, rel=1e-5)


def test_closure_driven_bases_are_refused_at_construction():
    model = _model()
    with pytest.raises(ValueError, match="LBFGS re-evaluates the closure"):
        lawn.LAWN(torch.optim.LBFGS(model.parameters()), model.tail())
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    sam = pytorch_optimizer.SAM(model.parameters(), base_optimizer=torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="SAM re-evaluates the closure"):
        lawn.LAWN(sam, model.tail())


def test_base_specific_methods_are_forwarded_and_private_ones_are_not():
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    model = _model()
    opt = lawn.LAWN(pytorch_optimizer.ScheduleFreeAdamW(model.parameters(), lr=1e-2), model.tail(), free_steps=1)
    opt.train()
    train_step(model, opt, *batches(1)[0])
    opt.eval()  # was AttributeError
    assert opt.base.param_groups[0]["train_mode"] is False
    with pytest.raises(AttributeError):
        _ = opt._step_supports_amp_scaling  # GradScaler must not see the base's fast path through LAWN
    with pytest.raises(AttributeError, match="no_such_method"):
        opt.no_such_method()


def test_a_zero_row_at_the_switch_fails_without_changing_anything_later():
    model = _model()
    with torch.no_grad():
        model.head.weight[0].zero_()
    model.head.weight.register_hook(lambda g: g * torch.tensor([0.0, 1, 1, 1]).unsqueeze(1))  # row 0 stays 0
    opt = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), model.tail(), free_steps=1, granularity="row")
    data = batches(3)
    with pytest.raises(ValueError, match="'head.weight' \\(row 0\\) has norm 0"):
        train_step(model, opt, *data[0])  # the free step is applied and counted, the switch refused
    assert opt.steps == 1 and opt.phase == "free"
    before = snapshot(model, opt)
    for xb, yb in data[1:]:
        with pytest.raises(ValueError, match="row 0"):
            train_step(model, opt, xb, yb)
        assert_same_tree(before["opt"], roundtrip(opt.state_dict()))
        for name, value in model.state_dict().items():
            if "running" not in name and "num_batches" not in name:  # the forward pass updates BN statistics
                assert torch.equal(value, before["model"][name]), name
    with torch.no_grad():
        model.head.weight[0].fill_(0.1)  # fixed: the next step switches and runs constrained
    train_step(model, opt, *data[2])
    assert opt.phase == "constrained" and opt.steps == 2


def _nested(free_inner, free_outer, seed: int = 0):
    model = _model(seed)
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    inner = lawn.LAWN(base, [("stem.weight", model.stem.weight)], free_steps=free_inner)
    outer = lawn.LAWN(inner, model.tail(), free_steps=free_outer) if free_outer is not None else None
    return model, base, inner, outer


def test_nested_constraints_keep_every_key_under_their_own_prefix():
    _, base, _, _ = _nested("auto", "auto")
    group = base.param_groups[0]
    inner = {k.removeprefix("lawn_") for k in group if k.startswith("lawn_")}
    outer = {k.removeprefix("lawn2_") for k in group if k.startswith("lawn2_")}
    assert inner == outer and {"switch_step", "auto_check_every", "auto_peak_growth", "target_norms"} <= inner
    assert not [k for k in group if k.startswith("lawn") and not k.startswith(("lawn_", "lawn2_"))]


def test_an_inner_fixed_switch_is_unaffected_by_the_outer_switch():
    model, _, inner, outer = _nested(3, 6)
    for xb, yb in batches(8):
        train_step(model, outer, xb, yb)
    assert (inner.switch_step, outer.switch_step) == (3, 6)  # the inner one was 6 once the outer switched


def test_an_inner_automatic_switch_fires_where_it_fires_alone():
    rule = lawn.AutoSwitch(check_every=5, threshold=0.5)
    alone_model, _, alone, _ = _nested(rule, None)
    model, _, inner, outer = _nested(rule, lawn.AutoSwitch(check_every=10_000))  # the outer never checks here
    for xb, yb in batches(80):
        train_step(alone_model, alone, xb, yb)
        train_step(model, outer, xb, yb)
    assert alone.switch_step is not None and inner.switch_step == alone.switch_step and outer.phase == "free"
