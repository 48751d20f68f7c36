"""LAWN is a drop-in optimizer: phases, shared state, schedulers, GradScaler, closures, checkpoints."""

import copy
import warnings

import pytest
import torch

import lawn
from lawn.constraint.engine import TARGETS_KEY
from lawn_helpers import OPTIMIZERS, BNNet, assert_same_tree, batches, roundtrip, train_step


def make(opt_name="adam", free_steps=5, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = BNNet()
    base = OPTIMIZERS[opt_name](model.parameters())
    return model, base, lawn.LAWN(base, model.tail(), free_steps=free_steps, **kwargs)


def test_is_an_optimizer_sharing_the_base_objects():
    model, base, opt = make()
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is base.param_groups
    assert opt.state is base.state
    assert opt.defaults is base.defaults
    assert opt.defaults["lawn_free_steps"] == 5
    assert opt.phase == "free" and opt.steps == 0
    assert [name for name, _ in opt.constrained_parameters] == ["hidden.weight", "head.weight"]


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_free_phase_is_bit_identical_to_the_base_optimizer(opt_name):
    steps = 6
    model_a, _, opt = make(opt_name, free_steps=steps)
    torch.manual_seed(0)
    model_b = BNNet()
    bare = OPTIMIZERS[opt_name](model_b.parameters())
    for xb, yb in batches(steps):
        train_step(model_a, opt, xb, yb)
        train_step(model_b, bare, xb, yb)
        for a, b in zip(model_a.parameters(), model_b.parameters()):
            assert torch.equal(a, b)
    assert opt.phase == "constrained" and opt.steps == steps


@pytest.mark.parametrize("opt_name", ["adam", "sgd", "lamb", "adagrad"])
def test_unconstrained_parameters_move_exactly_as_under_the_base(opt_name):
    """Given the same gradients, LAWN never touches what it does not constrain, in either phase."""
    torch.manual_seed(0)
    model_a, model_b = BNNet(), BNNet()
    model_b.load_state_dict(model_a.state_dict())
    opt = lawn.LAWN(OPTIMIZERS[opt_name](model_a.parameters()), model_a.tail(), free_steps=2)
    bare = OPTIMIZERS[opt_name](model_b.parameters())
    tail = {id(p) for _, p in model_a.tail()}
    gen = torch.Generator().manual_seed(3)
    for _ in range(6):
        for pa, pb in zip(model_a.parameters(), model_b.parameters()):
            g = torch.randn(pa.shape, generator=gen)
            pa.grad, pb.grad = g.clone(), g.clone()
        opt.step()
        bare.step()
        for pa, pb in zip(model_a.parameters(), model_b.parameters()):
            if id(pa) not in tail:
                assert torch.equal(pa, pb)
    assert opt.phase == "constrained"


def test_switch_records_norms_after_the_free_steps_th_step_and_keeps_them():
    model, _, opt = make(free_steps=3)
    data = batches(10)
    for i, (xb, yb) in enumerate(data[:3]):
        train_step(model, opt, xb, yb)
        assert opt.phase == ("constrained" if i == 2 else "free")
    recorded = {name: p.detach().norm().item() for name, p in model.tail()}
    assert {k: v.item() for k, v in opt.target_norms.items()} == pytest.approx(recorded, rel=1e-6)
    before = {name: p.detach().clone() for name, p in model.tail()}
    for xb, yb in data[3:]:
        train_step(model, opt, xb, yb)
        for name, p in model.tail():
            assert p.detach().norm().item() == pytest.approx(recorded[name], rel=1e-5)
    for name, p in model.tail():
        assert not torch.equal(p, before[name]), f"{name} did not move on its sphere"


def test_free_steps_zero_switches_at_construction_and_survives_the_lazy_init_of_the_base():
    """Targets exist before the base's first step; Adam's lazy state init must still happen."""
    model, base, opt = make("adam", free_steps=0)
    assert opt.phase == "constrained"
    norms_at_start = {name: p.detach().norm().item() for name, p in model.tail()}
    for xb, yb in batches(3):
        train_step(model, opt, xb, yb)
    head_state = base.state[model.head.weight]
    assert "exp_avg" in head_state and not any(k.startswith("lawn") for k in head_state)
    assert opt.target_norms["head.weight"].item() == pytest.approx(norms_at_start["head.weight"], rel=1e-6)
    for name, p in model.tail():
        assert p.detach().norm().item() == pytest.approx(norms_at_start[name], rel=1e-5)


def test_stateless_base_keeps_working_with_lawn_state_present():
    """Plain SGD never writes state; LAWN's own key must not make it believe it has state."""
    model, base, opt = make("sgd_plain", free_steps=1)
    for xb, yb in batches(4):
        train_step(model, opt, xb, yb)
    assert not base.state.get(model.head.weight), "LAWN writes nothing into the base's per-tensor state"


def test_manual_freeze_and_target_scale():
    model, _, opt = make(free_steps=100, target_scale=0.5)
    train_step(model, opt, *batches(1)[0])
    norm_before = model.head.weight.detach().norm().item()
    opt.freeze()
    assert opt.phase == "constrained"
    assert model.head.weight.detach().norm().item() == pytest.approx(0.5 * norm_before, rel=1e-5)
    for xb, yb in batches(3, seed=4):
        train_step(model, opt, xb, yb)
    assert model.head.weight.detach().norm().item() == pytest.approx(0.5 * norm_before, rel=1e-5)


def test_row_granularity_keeps_every_row_norm():
    model, _, opt = make(free_steps=2, granularity="row")
    data = batches(8)
    for xb, yb in data[:2]:
        train_step(model, opt, xb, yb)
    rows = model.head.weight.detach().norm(dim=1).clone()
    assert opt.target_norms["head.weight"].shape == rows.shape
    for xb, yb in data[2:]:
        train_step(model, opt, xb, yb)
    torch.testing.assert_close(model.head.weight.detach().norm(dim=1), rows, rtol=1e-5, atol=0)


def test_projection_off_still_retracts():
    model, _, opt = make(free_steps=1, project_gradient=False)
    data = batches(5)
    train_step(model, opt, *data[0])
    target = model.head.weight.detach().norm().item()
    grads_seen = []
    for xb, yb in data[1:]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        raw = model.head.weight.grad.clone()
        opt.step()
        grads_seen.append(torch.equal(raw, model.head.weight.grad))
    assert all(grads_seen), "with project_gradient=False the gradient must not be changed"
    assert model.head.weight.detach().norm().item() == pytest.approx(target, rel=1e-5)


def test_closure_returns_the_loss_and_matches_the_plain_loop():
    model_a, _, opt_a = make(free_steps=2)
    model_b, _, opt_b = make(free_steps=2)
    for xb, yb in batches(5):

        def closure(model=model_a, opt=opt_a, xb=xb, yb=yb):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            return loss

        with torch.no_grad():  # the closure must still get gradients
            loss_a = opt_a.step(closure)
        loss_b = train_step(model_b, opt_b, xb, yb)
        assert torch.equal(loss_a.detach(), loss_b)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


def test_add_param_group_inherits_counters_and_stays_unconstrained():
    model, base, opt = make(free_steps=2)
    data = batches(5)
    train_step(model, opt, *data[0])
    extra = torch.nn.Parameter(torch.randn(4, 4))
    opt.add_param_group({"params": [extra], "lr": 0.1})
    assert opt.param_groups[-1]["lawn_steps"] == 1 and opt.param_groups[-1]["lr"] == 0.1
    for xb, yb in data[1:]:
        extra.grad = torch.ones_like(extra)
        train_step(model, opt, xb, yb)
    assert opt.phase == "constrained" and opt.param_groups[-1]["lawn_frozen"]
    assert opt.param_groups[-1][TARGETS_KEY] == [None] and not torch.equal(extra, torch.zeros_like(extra))


SCHEDULERS = {
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5),
    "multistep": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 4]),
    "exponential": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9),
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 6),
    "cosine_restarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 3),
    "lambda": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (e + 1)),
    "multiplicative": lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, lambda e: 0.95),
    "linear": lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, 3),
    "constant": lambda o: torch.optim.lr_scheduler.ConstantLR(o, 0.5, 3),
    "polynomial": lambda o: torch.optim.lr_scheduler.PolynomialLR(o, 6),
    "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.1, total_steps=10),
    "cyclic": lambda o: torch.optim.lr_scheduler.CyclicLR(o, 1e-3, 1e-2, 2, cycle_momentum=False),
    "sequential": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, 2), torch.optim.lr_scheduler.ExponentialLR(o, 0.9)], [2]
    ),
    "chained": lambda o: torch.optim.lr_scheduler.ChainedScheduler(
        [torch.optim.lr_scheduler.ConstantLR(o, 0.5, 2), torch.optim.lr_scheduler.ExponentialLR(o, 0.9)]
    ),
    "plateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_drives_lawn_like_the_base(name):
    model_a, _, opt = make(free_steps=3)
    torch.manual_seed(0)
    model_b = BNNet()
    bare = OPTIMIZERS["adam"](model_b.parameters())
    sched_a, sched_b = SCHEDULERS[name](opt), SCHEDULERS[name](bare)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for xb, yb in batches(7):
            loss_a = train_step(model_a, opt, xb, yb)
            loss_b = train_step(model_b, bare, xb, yb)
            sched_a.step(loss_a) if name == "plateau" else sched_a.step()
            sched_b.step(loss_b) if name == "plateau" else sched_b.step()
            assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in bare.param_groups]
    assert opt.phase == "constrained"


def test_grad_scaler_skipped_steps_do_not_count():
    model, _, opt = make(free_steps=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    data = batches(6)
    applied = 0
    for i, (xb, yb) in enumerate(data):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
        scaler.scale(loss).backward()
        if i in (1, 3):
            model.stem.weight.grad[0, 0] = float("inf")
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        skipped = i in (1, 3)
        applied += not skipped
        assert opt.steps == applied
        moved = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        assert moved != skipped
        assert opt.phase == ("constrained" if applied >= 2 else "free")


@pytest.mark.parametrize("checkpoint_at", [2, 4, 6], ids=["before_switch", "at_switch", "after_switch"])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_resume_is_bit_identical(checkpoint_at, granularity):
    total, free_steps = 10, 4
    data = batches(total)
    model, _, opt = make(free_steps=free_steps, granularity=granularity)
    for xb, yb in data:
        train_step(model, opt, xb, yb)

    model_a, _, opt_a = make(free_steps=free_steps, granularity=granularity)
    for xb, yb in data[:checkpoint_at]:
        train_step(model_a, opt_a, xb, yb)
    checkpoint = roundtrip({"model": model_a.state_dict(), "opt": opt_a.state_dict()})

    model_b, _, opt_b = make(free_steps=free_steps, granularity=granularity, seed=123)
    model_b.load_state_dict(checkpoint["model"])
    opt_b.load_state_dict(checkpoint["opt"])
    assert opt_b.steps == checkpoint_at and opt_b.phase == opt_a.phase
    for xb, yb in data[checkpoint_at:]:
        train_step(model_b, opt_b, xb, yb)
    for a, b in zip(model.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    assert_same_tree(roundtrip(opt.state_dict()), roundtrip(opt_b.state_dict()))


def test_state_dict_is_standard_and_has_targets_in_param_groups():
    model, _, opt = make(free_steps=3)
    train_step(model, opt, *batches(1)[0])
    sd = roundtrip(opt.state_dict())
    assert set(sd) == {"state", "param_groups"}
    ids = [i for i, p in enumerate(model.parameters()) if any(p is q for _, q in model.tail())]
    flat = [p for group in sd["param_groups"] for p in group["params"]]
    targets = [t for group in sd["param_groups"] for t in group[TARGETS_KEY]]
    for i in ids:
        assert targets[flat.index(i)].dtype == torch.float32
        assert not any(k.startswith("lawn") for k in sd["state"].get(i, {}))
    assert sd["param_groups"][0]["lawn_frozen"] is False and sd["param_groups"][0]["lawn_steps"] == 1


def test_bf16_parameters_keep_fp32_targets_through_a_checkpoint():
    torch.manual_seed(0)
    model = BNNet().to(torch.bfloat16)
    opt = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), model.tail(), free_steps=1)
    xb, yb = batches(1)[0]
    train_step(model, opt, xb.to(torch.bfloat16), yb)
    target = opt.target_norms["head.weight"].clone()
    assert target.dtype == torch.float32
    fresh = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), model.tail(), free_steps=1)
    fresh.load_state_dict(roundtrip(opt.state_dict()))
    assert fresh.target_norms["head.weight"].dtype == torch.float32
    assert torch.equal(fresh.target_norms["head.weight"], target)


def test_loading_a_bare_base_checkpoint_keeps_lawn_settings():
    torch.manual_seed(0)
    model = BNNet()
    bare = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_step(model, bare, *batches(1)[0])
    opt = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), model.tail(), free_steps=3)
    opt.load_state_dict(roundtrip(bare.state_dict()))
    assert opt.param_groups[0]["lawn_free_steps"] == 3 and opt.phase == "free"
    for xb, yb in batches(4):
        train_step(model, opt, xb, yb)
    assert opt.phase == "constrained"


def test_deepcopy_gives_an_independent_working_optimizer():
    model, _, opt = make(free_steps=1)
    train_step(model, opt, *batches(1)[0])
    model2 = copy.deepcopy(model)
    opt2 = lawn.LAWN(OPTIMIZERS["adam"](model2.parameters()), model2.tail(), free_steps=1)
    opt2.load_state_dict(opt.state_dict())
    clone = copy.deepcopy(opt)
    assert clone.state is not opt.state and clone.phase == opt.phase
    assert torch.equal(clone.target_norms["head.weight"], opt.target_norms["head.weight"])


def test_step_hooks_run():
    model, _, opt = make(free_steps=1)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    train_step(model, opt, *batches(1)[0])
    assert calls == ["pre", "post"]


def test_a_switch_step_set_by_hand_in_every_group_is_followed():
    """The switch rule lives in param_groups (as load_state_dict's warning says: set an option in every group)."""
    model, _, opt = make(free_steps=100)
    for group in opt.param_groups:
        group["lawn_free_steps"] = 2
    for xb, yb in batches(3):
        train_step(model, opt, xb, yb)
    assert opt.switch_step == 2 and opt.phase == "constrained"
