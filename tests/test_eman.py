"""EMAN vs the plain EMA teacher: what is averaged, and which BN statistics the teacher uses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lawn import EMAN, EMATeacher


def _student(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _train_student(student: nn.Module, steps: int = 3) -> None:
    """Move the student's parameters and its BN running statistics."""
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    student.train()
    for _ in range(steps):
        optimizer.zero_grad()
        student(torch.randn(16, 4) * 3 + 1).square().mean().backward()
        optimizer.step()


def test_the_teacher_is_a_frozen_copy_in_its_mode() -> None:
    student = _student()
    eman, ema = EMAN(student), EMATeacher(student)
    for averaged in (eman, ema):
        assert averaged.teacher is not student
        assert all(not p.requires_grad for p in averaged.teacher.parameters())
        for a, b in zip(averaged.teacher.state_dict().values(), student.state_dict().values()):
            assert torch.equal(a, b)
    assert not eman.teacher.training and ema.teacher.training
    assert all(p.requires_grad for p in student.parameters())


def test_eman_averages_parameters_and_bn_statistics_and_copies_the_counter() -> None:
    student = _student()
    eman = EMAN(student, momentum=0.9)
    before = {k: v.clone() for k, v in eman.teacher.state_dict().items()}
    _train_student(student)
    assert eman.update() == pytest.approx(0.9)
    after, now = eman.teacher.state_dict(), student.state_dict()
    for key in ("0.weight", "3.bias", "1.weight", "1.running_mean", "1.running_var"):
        assert not torch.equal(now[key], before[key]), key  # the test really moved it
        torch.testing.assert_close(after[key], 0.9 * before[key] + 0.1 * now[key])
    assert after["1.num_batches_tracked"].item() == now["1.num_batches_tracked"].item() == 3


def test_eman_teacher_normalizes_with_the_averaged_statistics_not_the_batch() -> None:
    student = _student()
    eman = EMAN(student, momentum=0.5)
    _train_student(student)
    eman.update()
    buffers = {k: v.clone() for k, v in eman.teacher.named_buffers()}
    x = torch.randn(8, 4) * 5
    out = eman(x)
    torch.testing.assert_close(eman(x[:1]), out[:1])  # no dependence on the rest of the batch
    bn = eman.teacher[1]
    hidden = eman.teacher[0](x)
    expected = (hidden - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(eman.teacher[3](torch.relu(expected)), out)
    for k, v in eman.teacher.named_buffers():
        assert torch.equal(v, buffers[k]), k  # running the teacher does not recompute its statistics
    assert not out.requires_grad


def test_plain_ema_teacher_averages_parameters_only_and_uses_batch_statistics() -> None:
    student = _student()
    ema = EMATeacher(student, momentum=0.9)
    before = {k: v.clone() for k, v in ema.teacher.state_dict().items()}
    _train_student(student)
    ema.update()
    after, now = ema.teacher.state_dict(), student.state_dict()
    torch.testing.assert_close(after["0.weight"], 0.9 * before["0.weight"] + 0.1 * now["0.weight"])
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(after[key], before[key]), key  # not averaged
    x = torch.randn(8, 4) * 5
    out = ema(x)
    assert not torch.allclose(ema(x[:2])[:1], out[:1])  # BN with the batch's statistics
    assert not torch.equal(ema.teacher[1].running_mean, before["1.running_mean"])  # its own, from its batches


def test_cosine_schedule_raises_the_momentum_to_one() -> None:
    eman = EMAN(_student(), momentum=0.99, schedule="cosine", total_steps=100)
    assert eman.momentum_at(0) == pytest.approx(0.99)
    assert eman.momentum_at(50) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)
    assert eman.momentum_at(100) == pytest.approx(1.0)
    assert eman.momentum_at(250) == pytest.approx(1.0)
    assert [eman.update() for _ in range(2)] == [pytest.approx(eman.momentum_at(k)) for k in (0, 1)]
    assert eman.update(step=100) == pytest.approx(1.0)
    assert EMAN(_student(), momentum=0.9).momentum_at(10_000) == 0.9


def test_momentum_zero_copies_the_student() -> None:
    student = _student()
    eman = EMAN(student, momentum=0.0)
    _train_student(student)
    eman.update()
    for a, b in zip(eman.teacher.state_dict().values(), student.state_dict().values()):
        assert torch.equal(a, b)


def test_state_dict_round_trip() -> None:
    student = _student()
    eman = EMAN(student, momentum=0.9)
    _train_student(student)
    eman.update()
    restored = EMAN(_student(seed=1), momentum=0.9)
    restored.load_state_dict(eman.state_dict())
    assert restored.updates == 1
    for a, b in zip(restored.teacher.state_dict().values(), eman.teacher.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("damage", ["missing key", "other shape", "no updates"])
def test_a_checkpoint_that_does_not_fit_changes_nothing(damage: str) -> None:
    student = _student()
    eman = EMAN(student, momentum=0.9)
    _train_student(student)
    eman.update()
    state = {"teacher": dict(eman.state_dict()["teacher"]), "updates": 5}
    state["teacher"]["0.weight"] = state["teacher"]["0.weight"] + 1  # would be copied before the refusal
    if damage == "missing key":
        del state["teacher"]["3.bias"]
    elif damage == "other shape":
        state["teacher"]["3.bias"] = torch.zeros(4)
    else:
        del state["updates"]
    before = {k: v.clone() for k, v in eman.teacher.state_dict().items()}
    with pytest.raises(ValueError, match="3.bias" if damage != "no updates" else "updates"):
        eman.load_state_dict(state)
    assert eman.updates == 1
    for key, value in eman.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="momentum"):
        EMAN(_student(), momentum=1.0)
    with pytest.raises(ValueError, match="schedule"):
        EMAN(_student(), schedule="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_steps"):
        EMAN(_student(), schedule="cosine")
    with pytest.raises(TypeError, match="student"):
        EMAN("resnet")  # type: ignore[arg-type]
    student = _student()
    eman = EMAN(student)
    student.append(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"student.*4\.weight"):
        eman.update()
