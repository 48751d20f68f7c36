"""lawn.LAWNSchedule: the three phases at every step, following a fixed or an automatic switch, and an exact resume
across the switch."""

import math

import pytest
import torch

import lawn
from lawn.schedule import lawn_schedule_factor
from lawn_helpers import BNNet, batches, roundtrip, train_step

T, W, R, FREE, LR = 40, 5, 6, 15, 0.1


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


def make(seed: int = 0, free_steps=FREE, **kwargs):
    torch.manual_seed(seed)
    model = BNNet()
    opt = lawn.LAWN(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9), model.tail(), free_steps=free_steps)
    options = {"warmup_steps": W, "rewarmup_steps": R, "rewarmup_from": 0.2, "final_fraction": 0.1, **kwargs}
    return model, opt, lawn.LAWNSchedule(opt, T, **options)


def run(model, opt, sched, data) -> list[float]:
    """The learning rate each step ran with."""
    used = []
    for xb, yb in data:
        used.append(opt.param_groups[0]["lr"])
        train_step(model, opt, xb, yb)
        sched.step()
    return used


def test_every_phase_has_its_shape():
    model, opt, sched = make()
    used = run(model, opt, sched, batches(T))
    assert opt.switch_step == FREE
    for t in range(W):  # 1. linear warm-up
        assert used[t] == pytest.approx(LR * (t + 1) / W)
    for t in range(W, FREE):  # 2. constant until the switch
        assert used[t] == pytest.approx(LR)
    for t in range(FREE, FREE + R):  # 3. re-warm-up from 0.2 of the value back up to it
        assert used[t] == pytest.approx(LR * (0.2 + 0.8 * (t - FREE + 1) / R))
    assert used[FREE] < used[FREE - 1] and used[FREE + R - 1] == pytest.approx(LR)
    start = FREE + R  # 4. cosine decay to 0.1 at T
    for t in range(start, T):
        p = (t - start) / (T - start)
        assert used[t] == pytest.approx(LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))))
    assert all(a >= b for a, b in zip(used[start:], used[start + 1 :]))
    assert lawn_schedule_factor(T, T, FREE, warmup_steps=W, rewarmup_steps=R, final_fraction=0.1) == pytest.approx(0.1)


def test_decay_before_the_switch_scales_the_rest_by_its_value_there():
    kwargs = {"warmup_steps": W, "rewarmup_steps": R, "final_fraction": 0.0, "before_switch": "decay"}
    value = lawn_schedule_factor(FREE - 1, T, None, **kwargs)
    at_switch = 0.5 * (1 + math.cos(math.pi * (FREE - W) / (T - W)))
    assert lawn_schedule_factor(FREE + R - 1, T, FREE, **kwargs) == pytest.approx(at_switch)
    assert value > at_switch  # decaying before the switch
    assert lawn_schedule_factor(FREE, T, FREE, **kwargs) == pytest.approx(at_switch * (0.1 + 0.9 / R))
    linear = lawn_schedule_factor(FREE + R + 5, T, FREE, **{**kwargs, "decay": "linear"})  # linear before, too
    assert linear == pytest.approx((1 - (FREE - W) / (T - W)) * (1 - 5 / (T - FREE - R)))
    assert lawn_schedule_factor(T - 1, T, FREE, **{**kwargs, "decay": "constant"}) == 1.0  # no decay anywhere


def test_follows_an_automatic_switch():
    model, opt, sched = make(free_steps=lawn.AutoSwitch(check_every=4, threshold=0.5), rewarmup_from=0.0)
    used = run(model, opt, sched, batches(T))
    s = opt.switch_step
    assert s is not None and W < s < T - R, "the case must switch inside the run"
    assert used[s - 1] == pytest.approx(LR) and used[s] == pytest.approx(LR / R)


def test_no_switch_no_rewarmup():
    with pytest.warns(UserWarning, match="never leaves the free phase"):
        model, opt, sched = make(free_steps=10_000)
    used = run(model, opt, sched, batches(T))
    assert opt.switch_step is None and used[W:] == pytest.approx([LR] * (T - W))


@pytest.mark.parametrize("stop", [FREE - 2, FREE, FREE + 3])  # before, at and after the switch
def test_resumes_exactly_across_the_switch(stop):
    data = batches(T)
    model, opt, sched = make()
    straight = run(model, opt, sched, data)

    model, opt, sched = make()
    first = run(model, opt, sched, data[:stop])
    ckpt = roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()})
    model, opt, sched = make(seed=7)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    resumed = first + run(model, opt, sched, data[stop:])
    assert resumed == straight
    model2, opt2, sched2 = make()
    run(model2, opt2, sched2, data)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_bad_input_is_named():
    model = BNNet()
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="switch_step"):
        lawn.LAWNSchedule(plain, 10)
    opt = lawn.LAWN(torch.optim.SGD(model.parameters(), lr=0.1), model.tail(), free_steps=3)
    with pytest.raises(ValueError, match="decay"):
        lawn.LAWNSchedule(opt, 10, decay="exp")
    with pytest.raises(ValueError, match="rewarmup_from"):
        lawn.LAWNSchedule(opt, 10, rewarmup_from=1.5)
    with pytest.raises(ValueError, match="total_steps"):
        lawn.LAWNSchedule(opt, 0)
    assert opt.param_groups[0]["lr"] == 0.1  # nothing changed


def test_a_schedule_shorter_than_the_free_phase_warns() -> None:
    import warnings

    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = lawn.LAWN(torch.optim.SGD([w], lr=0.1), [w], free_steps=1000)
    with pytest.warns(UserWarning, match=r"free_steps=1000 .* total_steps=100: the run never leaves the free phase"):
        lawn.LAWNSchedule(opt, total_steps=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lawn.LAWNSchedule(lawn.LAWN(torch.optim.SGD([w], lr=0.1), [w], free_steps=10), total_steps=100)
        lawn.LAWNSchedule(lawn.LAWN(torch.optim.SGD([w], lr=0.1), [w], free_steps="auto"), total_steps=100)


def test_a_switch_during_the_warm_up_drops_at_most_once_then_rises_to_the_peak_and_decays():
    """No saw-tooth: with the switch inside the warm-up the factor is the smaller of the two ramps until both are
    done (the peak at max(W, s + R)), then the decay."""
    for warmup, switch, rewarmup in ((4, 1, 6), (8, 1, 6), (8, 2, 3), (8, 0, 10)):  # (4, 1, 6): was 1 → .67 → 1
        start = max(warmup, switch + rewarmup)
        kwargs = {"warmup_steps": warmup, "rewarmup_steps": rewarmup, "rewarmup_from": 0.0}
        factors = [lawn_schedule_factor(t, 40, switch, **kwargs) for t in range(40)]
        drops = [t for t in range(1, 40) if factors[t] < factors[t - 1] and t < start]
        assert drops in ([], [switch])  # at most one drop, at the switch
        assert all(a <= b for a, b in zip(factors[switch:start], factors[switch + 1 : start + 1]))
        assert factors[start] == pytest.approx(1.0) and max(factors) == pytest.approx(1.0)
        assert all(a >= b for a, b in zip(factors[start:], factors[start + 1 :]))  # then only the decay
        for t in range(switch, start):
            rewarm = (t - switch + 1) / rewarmup if t - switch < rewarmup else 1.0
            assert factors[t] == pytest.approx(min((t + 1) / warmup if t < warmup else 1.0, rewarm))


def test_a_warm_up_as_long_as_the_run_warns():
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = lawn.LAWN(torch.optim.SGD([w], lr=0.1), [w], free_steps=10)
    with pytest.warns(UserWarning, match=r"warmup_steps=120 >= total_steps=100: the run ends in its warm-up before"):
        lawn.LAWNSchedule(opt, total_steps=100, warmup_steps=120)
    with pytest.warns(UserWarning, match=r"warmup_steps=100 >= total_steps=100: .* never decays"):
        lawn.LAWNSchedule(opt, total_steps=100, warmup_steps=100)


def test_a_fixed_switch_too_late_for_the_re_warm_up_warns():
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = lawn.LAWN(torch.optim.SGD([w], lr=0.1), [w], free_steps=95)
    with pytest.warns(UserWarning, match=r"leaves 5 of total_steps=100 for a re-warm-up of rewarmup_steps=10"):
        lawn.LAWNSchedule(opt, total_steps=100, rewarmup_steps=10)


@pytest.mark.parametrize("before_switch", ["constant", "decay"])
def test_an_automatic_switch_that_never_fires_warns_once_when_too_late(before_switch):
    import warnings

    model, opt, sched = make(free_steps=lawn.AutoSwitch(check_every=1000), before_switch=before_switch)
    data = batches(T)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        used = run(model, opt, sched, data[: T - R - 1])
    assert not [w for w in caught if "LAWNSchedule" in str(w.message)]  # still time for the shape
    with pytest.warns(UserWarning, match=r"has not fired by step 34 of total_steps=40.*ends in the free phase") as got:
        used += run(model, opt, sched, data[T - R - 1 :])
    assert len([w for w in got if "LAWNSchedule" in str(w.message)]) == 1
    assert opt.switch_step is None
    if before_switch == "constant":
        assert used[W:] == pytest.approx([LR] * (T - W))  # the shape it has: no decay
    else:
        assert all(a >= b for a, b in zip(used[W:], used[W + 1 :])) and used[-1] < LR / 2
