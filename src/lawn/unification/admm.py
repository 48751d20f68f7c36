"""ADMM training towards unified / pruned blocks.

The constrained problem ``min L(W) s.t. W_l ∈ S_l`` (``S_l``: the layer's weights with the wanted fractions of
unified and pruned blocks) is split with a copy ``Z_l ∈ S_l`` and a scaled dual ``U_l``:

    train on   L(W) + ρ/2 · Σ_l ‖W_l − Z_l + U_l‖²          (``penalty()`` is the second term)
    every ``update_every`` steps:   Z_l ← Π(W_l + U_l),   U_l ← U_l + W_l − Z_l,   ρ ← min(ρ·rho_growth, rho_max)

When ρ grows the scaled dual is rescaled, ``U ← U·ρ_old/ρ_new``, so the unscaled dual ``ρU`` is unchanged.
``harden()`` then projects ``W ← Π(W)`` and freezes kinds and signs (see ``parametrization.harden``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lawn._checks import is_int, is_number
from lawn.unification.blocks import BlockSpec, check_fractions, choose_kinds, from_blocks, project_blocks, to_blocks
from lawn.unification.parametrization import harden
from lawn.unification.selection import select_weights


def _positive(name: str, value: Any, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be a positive {'int' if integer else 'finite number'}")


class ADMM:
    """ADMM towards ``unify``/``prune`` fractions of blocks in every selected weight (see the module docstring).

    ``params=None`` takes every Linear/Conv weight the block size fits (the others are listed in ``skipped``).
    Call ``penalty()`` in the loss, ``update()`` after every optimizer step, ``harden()`` at the end.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: BlockSpec | None = None,
        unify: float = 0.5,
        prune: float = 0.25,
        rho: float = 1e-3,
        update_every: int = 100,
        params: Iterable[torch.nn.Parameter | str] | None = None,
        rho_growth: float = 1.0,
        rho_max: float = math.inf,
    ) -> None:
        spec = BlockSpec() if spec is None else spec
        check_fractions(unify, prune)
        _positive("rho", rho)
        _positive("update_every", update_every, integer=True)
        _positive("rho_growth", rho_growth)
        if not (isinstance(rho_max, (int, float)) and rho_max >= rho):
            raise ValueError(f"rho_max={rho_max!r}: must be a number >= rho={rho}")
        targets, self.skipped = select_weights(model, spec, params)
        self.model, self.spec, self.unify, self.prune = model, spec, float(unify), float(prune)
        self.rho, self.rho_growth, self.rho_max = float(rho), float(rho_growth), float(rho_max)
        self.update_every = update_every
        self.names = [f"{name}.weight" if name else "weight" for name, _ in targets]
        self.modules = [module for _, module in targets]
        self.steps = 0
        self.hardened = False
        with torch.no_grad():
            self.z = [self._project(m.weight) for m in self.modules]
            self.u = [torch.zeros_like(m.weight) for m in self.modules]

    def _project(self, weight: torch.Tensor) -> torch.Tensor:
        blocks = to_blocks(weight.detach(), self.spec.size)
        kinds = choose_kinds(blocks, self.unify, self.prune)
        return from_blocks(project_blocks(blocks, kinds), weight.shape).contiguous()

    def _check_live(self) -> None:
        if self.hardened:
            raise RuntimeError("ADMM: already hardened; the penalty and the Z/U step no longer apply")

    def penalty(self) -> torch.Tensor:
        """``ρ/2 · Σ_l ‖W_l − Z_l + U_l‖²`` (a differentiable scalar to add to the loss)."""
        self._check_live()
        total = sum(((m.weight - z + u) ** 2).sum() for m, z, u in zip(self.modules, self.z, self.u, strict=True))
        return 0.5 * self.rho * total

    def update(self, force: bool = False) -> bool:
        """Count one optimizer step; on every ``update_every``-th (or when ``force``) do the Z/U step. Returns
        whether it did."""
        self._check_live()
        self.steps += 1
        if not force and self.steps % self.update_every:
            return False
        with torch.no_grad():
            for i, m in enumerate(self.modules):
                w = m.weight.detach()
                self.z[i] = self._project(w + self.u[i])
                self.u[i] = self.u[i] + w - self.z[i]
            new_rho = min(self.rho * self.rho_growth, self.rho_max)
            if new_rho != self.rho:
                self.u = [u * (self.rho / new_rho) for u in self.u]
                self.rho = new_rho
        return True

    def residual(self) -> float:
        """Relative primal residual ``‖W − Z‖ / ‖W‖`` over all selected weights (0 when W is in the set)."""
        self._check_live()
        with torch.no_grad():
            num = sum(float(((m.weight - z) ** 2).sum()) for m, z in zip(self.modules, self.z, strict=True))
            den = sum(float((m.weight**2).sum()) for m in self.modules)
        return math.sqrt(num / den) if den else 0.0

    def harden(self) -> dict[str, torch.Tensor]:
        """``W ← Π(W)``, freeze kinds and signs (parametrization). Build the optimizer again afterwards."""
        self._check_live()
        kinds = harden(self.model, self.spec, self.unify, self.prune, params=self.names)
        self.hardened = True
        self.z, self.u = [], []
        return kinds

    def state_dict(self) -> dict[str, Any]:
        """Resumable state: Z, U (per weight name), ρ and the step count."""
        return {
            "z": dict(zip(self.names, self.z, strict=True)),
            "u": dict(zip(self.names, self.u, strict=True)),
            "rho": self.rho,
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; every entry is checked before anything is written."""
        self._check_live()
        if not isinstance(state, dict):
            raise TypeError(f"state: expected the dict ADMM.state_dict() returns, got {type(state).__name__}")
        missing = [k for k in ("z", "u", "rho", "steps") if k not in state]
        if missing:
            raise ValueError(
                f"state: missing {missing} (has {sorted(state)}); load a dict saved from ADMM.state_dict(); "
                "nothing was changed"
            )
        for key in ("z", "u"):
            if not isinstance(state[key], dict) or set(state[key]) != set(self.names):
                got = sorted(state[key]) if isinstance(state[key], dict) else type(state[key]).__name__
                raise ValueError(f"state[{key!r}]: weights {got} != this ADMM's {self.names}")
        for name, m in zip(self.names, self.modules, strict=True):
            for key in ("z", "u"):
                value = state[key][name]
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(m.weight.shape):
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(f"state[{key!r}][{name!r}]: shape {shape} != the weight's {tuple(m.weight.shape)}")
        rho, steps = state["rho"], state["steps"]
        if not is_number(rho) or not (0 < rho < math.inf):
            raise ValueError(f"state['rho']: expected a positive finite number, got {rho!r}")
        if not is_int(steps) or steps < 0:
            raise ValueError(f"state['steps']: expected an int >= 0, got {steps!r}")
        self.z = [state["z"][n].to(m.weight) for n, m in zip(self.names, self.modules, strict=True)]
        self.u = [state["u"][n].to(m.weight) for n, m in zip(self.names, self.modules, strict=True)]
        self.rho, self.steps = float(rho), steps
