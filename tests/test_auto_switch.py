"""free_steps="auto": the rule fires where it must (and exactly where its definition says), not where it must not,
checks only every N steps, and a resume before, at or after the switch continues bit-identically."""

import math

import pytest
import torch

import lawn
from lawn.constraint import auto_switch
from lawn_helpers import BNNet, batches, roundtrip, train_step

EVERY, THRESHOLD, STEPS = 5, 0.5, 60


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


def make(seed: int = 0, lr: float = 0.1, free_steps=None, weight_decay: float = 0.0, momentum: float = 0.9):
    torch.manual_seed(seed)
    model = BNNet()
    base = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    rule = lawn.AutoSwitch(check_every=EVERY, threshold=THRESHOLD) if free_steps is None else free_steps
    return model, lawn.LAWN(base, model.tail(), free_steps=rule)


def expected_switch(data) -> int | None:
    """The rule applied by hand to plain training (the free phase is plain training)."""
    torch.manual_seed(0)
    model = BNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def log_norm() -> float:
        return 0.5 * math.log(sum(float(p.detach().double().pow(2).sum()) for _, p in model.tail()))

    last, peak = log_norm(), 0.0
    for step, (xb, yb) in enumerate(data, start=1):
        train_step(model, opt, xb, yb)
        if step % EVERY == 0:
            now = log_norm()
            growth, last = now - last, now
            peak = max(peak, growth)
            if peak > 0 and growth <= THRESHOLD * peak:
                return step
    return None


def test_switches_where_the_rule_says():
    data = batches(STEPS)
    model, opt = make()
    for step, (xb, yb) in enumerate(data, start=1):
        train_step(model, opt, xb, yb)
        if opt.phase == "constrained" and opt.switch_step == step:
            switched_norms = {name: float(p.detach().norm()) for name, p in model.tail()}
    expected = expected_switch(data)
    assert expected is not None and EVERY < expected < STEPS, "the case must trigger inside the run"
    assert opt.switch_step == expected
    for name, target in opt.target_norms.items():  # frozen at the norms the weights had at the switch
        assert float(target) == pytest.approx(switched_norms[name], rel=1e-6)


@pytest.mark.parametrize("case", ["no learning", "shrinking norms"])
def test_does_not_switch_when_the_norms_never_grow(case):
    lr, wd = (0.0, 0.0) if case == "no learning" else (0.05, 2.0)  # 2.0: decay outweighs the loss's pull
    model, opt = make(lr=lr, weight_decay=wd, momentum=0.0)
    for xb, yb in batches(STEPS):
        train_step(model, opt, xb, yb)
    assert opt.phase == "free" and opt.switch_step is None
    assert opt.param_groups[0][auto_switch.PEAK_KEY] == 0.0


def test_max_free_steps_bounds_the_free_phase():
    model, opt = make(lr=0.0, free_steps=lawn.AutoSwitch(check_every=EVERY, max_free_steps=7))
    for xb, yb in batches(10):
        train_step(model, opt, xb, yb)
    assert opt.switch_step == 7


def test_reads_the_weights_only_every_n_steps(monkeypatch):
    calls = []
    real = auto_switch.log_norm
    monkeypatch.setattr(auto_switch, "log_norm", lambda params: calls.append(1) or real(params))
    model, opt = make(lr=0.0)
    for xb, yb in batches(23):
        train_step(model, opt, xb, yb)
    assert len(calls) == 1 + 23 // EVERY  # once at construction (the starting norm), then once per check


@pytest.mark.parametrize("where", ["before", "at", "after"])
def test_resume_across_the_automatic_switch_is_bit_identical(where):
    data = batches(STEPS)
    model, opt = make()
    for xb, yb in data:
        train_step(model, opt, xb, yb)
    s = opt.switch_step
    assert s is not None
    stop = {"before": s - 2, "at": s, "after": s + 3}[where]

    first, first_opt = make()
    for xb, yb in data[:stop]:
        train_step(first, first_opt, xb, yb)
    ckpt = roundtrip({"model": first.state_dict(), "opt": first_opt.state_dict()})
    resumed, resumed_opt = make(seed=5)
    resumed.load_state_dict(ckpt["model"])
    resumed_opt.load_state_dict(ckpt["opt"])
    for xb, yb in data[stop:]:
        train_step(resumed, resumed_opt, xb, yb)
    assert resumed_opt.switch_step == s
    for p, q in zip(resumed.parameters(), model.parameters()):
        assert torch.equal(p, q)
    for name, target in opt.target_norms.items():
        assert torch.equal(resumed_opt.target_norms[name], target)


def test_switch_step_for_fixed_and_manual_switches():
    model = BNNet()
    opt = lawn.LAWN(torch.optim.SGD(model.parameters(), lr=0.01), model.tail(), free_steps=3)
    assert opt.switch_step is None
    for xb, yb in batches(5):
        train_step(model, opt, xb, yb)
    assert opt.switch_step == 3
    assert lawn.LAWN(torch.optim.SGD(model.parameters(), lr=0.01), model.tail(), free_steps=0).switch_step == 0
    opt = lawn.LAWN(torch.optim.SGD(model.parameters(), lr=0.01), model.tail(), free_steps="auto")
    for xb, yb in batches(4):
        train_step(model, opt, xb, yb)
    opt.freeze()
    assert (opt.switch_step, opt.phase) == (4, "constrained")


def test_bad_input_is_named():
    model = BNNet()
    base = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="free_steps"):
        lawn.LAWN(base, model.tail(), free_steps="sometimes")
    with pytest.raises(ValueError, match="threshold"):
        lawn.AutoSwitch(threshold=1.5)
    with pytest.raises(ValueError, match="check_every"):
        lawn.AutoSwitch(check_every=0)
    assert not any(k.startswith("lawn_") for k in base.param_groups[0])  # nothing written on error


@pytest.mark.parametrize("free_steps", [3, "auto", lawn.AutoSwitch(check_every=EVERY, threshold=THRESHOLD)])
def test_a_bare_base_checkpoint_loads_in_every_switch_mode(free_steps):
    """The plain base optimizer's checkpoint (no LAWN entries) keeps LAWN's switch rule and its memory (was:
    KeyError 'lawn_auto_max_free_steps' after the base's state was replaced, and at every later step)."""
    data = batches(STEPS)
    torch.manual_seed(0)
    plain_model = BNNet()
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9)
    for xb, yb in data[:2]:
        train_step(plain_model, plain, xb, yb)
    model, opt = make(free_steps=free_steps)
    rule = {k: v for k, v in opt.param_groups[0].items() if k.startswith("lawn_")}
    model.load_state_dict(plain_model.state_dict())
    opt.load_state_dict(roundtrip(plain.state_dict()))
    assert {k: v for k, v in opt.param_groups[0].items() if k.startswith("lawn_")}.keys() == rule.keys()
    assert opt.free_steps_setting == (3 if free_steps == 3 else "auto")
    for p, q in zip(model.parameters(), plain_model.parameters()):  # the base's state is the checkpoint's
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], plain.state[q]["momentum_buffer"])
    for xb, yb in data[2:]:
        train_step(model, opt, xb, yb)
    assert opt.steps == STEPS - 2
    assert opt.phase == "constrained" or free_steps == "auto"  # AutoSwitch() checks every 50 steps: maybe not yet
