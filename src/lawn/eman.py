"""Moving-average teachers: EMAN (Cai et al., CVPR 2021) and the plain EMA teacher it replaces.

Both keep a teacher whose parameters are an exponential moving average of the student's::

    θ_teacher ← m · θ_teacher + (1 − m) · θ_student          (after every optimizer step)

They differ in the teacher's BatchNorm statistics:

* **plain EMA teacher** (mean teacher, MoCo, BYOL, FixMatch with EMA): only parameters are averaged; the
  teacher runs in train mode, so BN normalizes with the statistics of the batch it is given. Its output
  for one sample depends on the other samples in the batch, and those statistics do not match the averaged
  parameters.
* **EMAN**: the BN running statistics are averaged the same way (buffers included; the integer
  ``num_batches_tracked`` is copied), and the teacher always runs in eval mode, normalizing with those
  averaged statistics: no cross-sample dependency, statistics consistent with the averaged weights.

``m`` is 0.999 by default; ``schedule="cosine"`` raises it from ``m`` to 1 over ``total_steps`` updates
(``m_t = 1 − (1 − m)(cos(π t / T) + 1) / 2``), as in BYOL.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from lawn._checks import is_int, is_number

Schedule = Literal["constant", "cosine"]


class EMATeacher:
    """Plain EMA teacher: parameters averaged, BN statistics from the batch (teacher in train mode).

    Args:
        student: the trained model; the teacher starts as a deep copy with ``requires_grad=False``.
        momentum: ``m`` in ``θ_t ← m θ_t + (1 − m) θ_s``, in [0, 1).
        schedule: ``"constant"`` or ``"cosine"`` (``m`` → 1 over ``total_steps`` updates).
        total_steps: number of updates in training; required for ``"cosine"``.

    Call ``update()`` after each optimizer step and ``teacher_model(x)`` (no grad) for predictions.
    """

    averages_buffers = False

    def __init__(
        self,
        student: nn.Module,
        momentum: float = 0.999,
        schedule: Schedule = "constant",
        total_steps: int | None = None,
    ) -> None:
        if not isinstance(student, nn.Module):
            raise TypeError(f"student: expected a torch.nn.Module, got {type(student).__name__}")
        if not is_number(momentum) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule: expected 'constant' or 'cosine', got {schedule!r}")
        if schedule == "cosine" and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"total_steps: schedule='cosine' needs an int >= 1, got {total_steps!r}")
        self.student = student
        self.base_momentum = float(momentum)
        self.schedule = schedule
        self.total_steps = total_steps
        self.updates = 0
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._set_mode()

    def momentum_at(self, step: int) -> float:
        """``m`` for update number ``step`` (0-based)."""
        if self.schedule == "constant":
            return self.base_momentum
        progress = min(step, self.total_steps) / self.total_steps
        return 1.0 - (1.0 - self.base_momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0

    @torch.no_grad()
    def update(self, step: int | None = None) -> float:
        """Average the student into the teacher; return the momentum used.

        ``step`` is the update number for the schedule (default: updates so far).
        """
        m = self.momentum_at(self.updates if step is None else step)
        teacher, student = self._pairs(self.teacher), self._pairs(self.student)
        differ = sorted(teacher.keys() ^ student.keys()) or [
            name for name, t in teacher.items() if t.shape != student[name].shape
        ]
        if differ:
            raise ValueError(f"student: its tensors no longer match the teacher's: {differ}")
        for name, t in teacher.items():
            s = student[name].detach()
            if t.is_floating_point():
                t.lerp_(s.to(t.dtype), 1.0 - m)
            else:
                t.copy_(s)
        self.updates += 1
        self._set_mode()
        return m

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The teacher's prediction (no gradient), in the teacher's mode."""
        self._set_mode()
        return self.teacher(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned; checked first, so a checkpoint that does not fit changes nothing
        (``nn.Module.load_state_dict`` would copy the matching tensors before refusing the rest)."""
        saved = state.get("teacher") if isinstance(state, Mapping) else None
        updates = state.get("updates") if isinstance(state, Mapping) else None
        if not isinstance(saved, Mapping) or not is_int(updates) or updates < 0:
            raise ValueError(
                "state: expected {'teacher': a state_dict, 'updates': an int >= 0}, as state_dict() returns"
            )
        own = self.teacher.state_dict()
        missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
        reshaped = [
            key
            for key in own.keys() & saved.keys()
            if isinstance(own[key], torch.Tensor)
            and (not isinstance(saved[key], torch.Tensor) or saved[key].shape != own[key].shape)
        ]
        if missing or unexpected or reshaped:
            raise ValueError(
                f"state: the teacher's checkpoint does not fit this teacher (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}, other shape {sorted(reshaped)[:5]}); load a checkpoint of the same model"
            )
        self.teacher.load_state_dict(saved)
        self.updates = updates

    def _pairs(self, model: nn.Module) -> dict[str, torch.Tensor]:
        pairs = dict(model.named_parameters())
        if self.averages_buffers:
            pairs.update(model.named_buffers())
        return pairs

    def _set_mode(self) -> None:
        self.teacher.train()


class EMAN(EMATeacher):
    """EMAN: parameters *and* BN running statistics averaged (``num_batches_tracked`` copied); the teacher
    always runs in eval mode, so it normalizes with the averaged statistics.

    Same arguments as :class:`EMATeacher`; ``EMAN(student).teacher`` is the averaged model.
    """

    averages_buffers = True

    def _set_mode(self) -> None:
        self.teacher.eval()
