"""A-FAN: adversarial feature augmentation and normalization (Chen et al., arXiv 2103.12171).

Split the network at a module ``layer``; let ``h`` be that module's output on the clean batch (detached) and
``g(·)`` the rest of the network. A-FAN trains on

    L = (1 − w) · ℓ(f(x), y) + w · mean_s ℓ(g(N(h, h + s·δ)), y)

where ``w = adv_weight``, ``s`` runs over ``strengths`` (interpolations between the clean and the
adversarial feature), and ``δ`` comes from ``steps`` steps of sign-gradient ascent on ``ℓ(g(h + δ), y)``
starting from 0 (or a uniform random start)::

    δ ← clip_eps(δ + step_size · sign(∇_δ ℓ(g(h + δ), y)))

``N`` is the "normalization" half: ``None`` feeds ``h + s·δ`` itself (the released classification code);
``"position"`` is the released moment swap: ``h`` normalized by its own mean and std over channels (per
sample, per position) and rescaled with those of ``h + s·δ``; ``"batch"`` does the same with per-channel
batch statistics (mean and std over every dimension but the channel dimension 1). With ``w = 0.5``, one
strength ``s = 1`` and ``normalize=None`` this is the released recipe ``(ℓ_clean + ℓ_adv) / 2``.

``direction="random"`` is the control: ``δ = r · sign(ξ)``, ``ξ ~ N(0, I)``, with ``r = steps · step_size``
(capped at ``eps``), the size a sign-gradient ascent reaches when its signs agree; no attack passes.

How the split is reached: a forward hook on ``layer`` (any ``nn.Module``, no ``nn.Sequential`` needed). The
perturbed passes call the whole model again; the hook swaps the module's output for the perturbed feature.
The part before the split therefore runs again, without building a graph (under ``torch.no_grad``; the hook
turns gradients back on for the part after it). Per call: one clean pass with backward, ``steps`` attack
passes (forward and backward after the split), ``len(strengths)`` adversarial passes (forward after the
split now, backward later); plus ``steps + len(strengths)`` forwards of the part before the split.

BatchNorm (``bn``): with ``"freeze"`` (default) the extra passes normalize with their own batch statistics
(as in training) but leave the running statistics alone, so those stay exactly what plain training on the
clean batches would give. The released code (``"update"``) lets every attack pass update them: the
statistics used at test time then mix in adversarial features, and each step counts ``steps + 2`` updates
of the same batch, which shortens the running average's memory by that factor. Evaluation runs on clean
data, so we keep its statistics clean.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

Normalize = Literal["position", "batch"] | None
BNMode = Literal["freeze", "update"]
Direction = Literal["adversarial", "random"]
Criterion = Callable[[Any, Any], torch.Tensor]

NORMALIZE_EPS = 1e-5


@dataclass(frozen=True)
class AFANPieces:
    """What one :meth:`AFAN.loss` call computed, for logging.

    ``output``: the model's clean output (with graph); ``clean_loss``: ``ℓ(f(x), y)`` (with graph);
    ``adversarial_loss``: ``mean_s ℓ(g(N(h, h + s·δ)), y)`` (``None`` when A-FAN is off: ``steps == 0`` or
    ``adv_weight == 0``); ``perturbation``: the mean of ``|δ|`` (detached; ``None`` when off);
    ``attack_losses``: the loss after the split before each ascent step, ``ℓ(g(h + δ_t))`` for
    ``t = 0 … T−1`` (detached; ``None`` when off or ``direction="random"``). The detached values stay
    tensors: nothing here waits for the device.
    """

    output: Any
    clean_loss: torch.Tensor
    adversarial_loss: torch.Tensor | None
    perturbation: torch.Tensor | None = None
    attack_losses: torch.Tensor | None = None


def moment_swap(clean: torch.Tensor, adversarial: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``(clean − μ_c) / σ_c · σ_a + μ_a`` with means and stds over ``dims`` (``σ = sqrt(var + 1e-5)``)."""
    dims = tuple(dims)
    mean_c = clean.mean(dim=dims, keepdim=True)
    std_c = (clean.var(dim=dims, keepdim=True, unbiased=False) + NORMALIZE_EPS).sqrt()
    mean_a = adversarial.mean(dim=dims, keepdim=True)
    std_a = (adversarial.var(dim=dims, keepdim=True, unbiased=False) + NORMALIZE_EPS).sqrt()
    return (clean - mean_c) / std_c * std_a + mean_a


def normalize_feature(clean: torch.Tensor, adversarial: torch.Tensor, mode: Normalize) -> torch.Tensor:
    """The feature fed after the split: ``adversarial`` (``None``), or ``clean`` with the adversarial
    feature's moments over channels per sample and position (``"position"``) or per channel over the batch
    and positions (``"batch"``)."""
    if mode is None:
        return adversarial
    if mode == "position":
        return moment_swap(clean, adversarial, (1,))
    return moment_swap(clean, adversarial, [d for d in range(clean.dim()) if d != 1])


class AFAN:
    """Adversarial feature augmentation (and normalization) at module ``layer`` of ``model``.

    Args:
        model: any ``nn.Module`` (a ``DistributedDataParallel`` wrapper too: names may omit ``module.``).
        layer: the name of the module whose output is perturbed (as in ``model.named_modules()``).
        steps: sign-gradient ascent steps ``T`` (``0``: A-FAN off, the plain loss).
        step_size: the step in feature units (the released CIFAR-10 run: ``0.5 / 255``).
        eps: L∞ bound on ``δ`` (``None``: unbounded, as released).
        random_start: start from ``δ ~ U(−r, r)``, ``r = eps`` or ``step_size`` when ``eps`` is ``None``.
        strengths: the ``s`` in ``h + s·δ``, each in (0, 1]; the adversarial loss averages over them.
        normalize: ``None``, ``"position"`` (the released moment swap) or ``"batch"`` (see the module doc).
        adv_weight: ``w`` in ``(1 − w) ℓ_clean + w ℓ_adv``, in [0, 1] (``0``: the plain loss).
        bn: ``"freeze"`` (extra passes leave BatchNorm running statistics alone) or ``"update"`` (released).
        direction: ``"adversarial"`` or ``"random"`` (the random-sign control of the same size).

    Usage::

        afan = AFAN(model, layer="layer1", steps=5, step_size=0.01)
        loss, pieces = afan.loss(x, y, nn.functional.cross_entropy)
        loss.backward()
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        *,
        steps: int = 5,
        step_size: float = 0.5 / 255,
        eps: float | None = None,
        random_start: bool = False,
        strengths: Sequence[float] = (1.0,),
        normalize: Normalize = None,
        adv_weight: float = 0.5,
        bn: BNMode = "freeze",
        direction: Direction = "adversarial",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"steps: expected an integer >= 0 (0 turns A-FAN off), got {steps!r}")
        if not _positive(step_size):
            raise ValueError(f"step_size: expected a finite number > 0, got {step_size!r}")
        if eps is not None and not _positive(eps):
            raise ValueError(f"eps: expected None (no bound) or a finite number > 0, got {eps!r}")
        if not isinstance(random_start, bool):
            raise TypeError(f"random_start: expected True or False, got {random_start!r}")
        strengths = tuple(strengths) if isinstance(strengths, Sequence) else strengths
        if not isinstance(strengths, tuple) or not strengths or not all(_positive(s) and s <= 1.0 for s in strengths):
            raise ValueError(f"strengths: expected a non-empty list of numbers in (0, 1], got {strengths!r}")
        if normalize not in (None, "position", "batch"):
            raise ValueError(f"normalize: expected None, 'position' or 'batch', got {normalize!r}")
        if not _number(adv_weight) or not 0.0 <= adv_weight <= 1.0:
            raise ValueError(f"adv_weight: expected a number in [0, 1], got {adv_weight!r}")
        if bn not in ("freeze", "update"):
            raise ValueError(f"bn: expected 'freeze' or 'update', got {bn!r}")
        if direction not in ("adversarial", "random"):
            raise ValueError(f"direction: expected 'adversarial' or 'random', got {direction!r}")
        self.model = model
        self.layer = layer
        self.module = _resolve(model, layer)
        self.steps = steps
        self.step_size = float(step_size)
        self.eps = None if eps is None else float(eps)
        self.random_start = random_start
        self.strengths = tuple(float(s) for s in strengths)
        self.normalize = normalize
        self.adv_weight = float(adv_weight)
        self.bn = bn
        self.direction = direction
        self._checked = False

    # ------------------------------------------------------------------ public
    @property
    def active(self) -> bool:
        """``False`` when the configuration reduces to the plain loss (``steps == 0`` or ``adv_weight == 0``)."""
        return self.steps > 0 and self.adv_weight > 0.0

    @property
    def extra_passes(self) -> int:
        """Passes of the part after the split beyond plain training's one: attack + adversarial passes."""
        if not self.active:
            return 0
        attack = self.steps if self.direction == "adversarial" else 0
        return attack + len(self.strengths)

    def loss(self, x: Any, y: Any, criterion: Criterion) -> tuple[torch.Tensor, AFANPieces]:
        """The A-FAN training loss on batch ``(x, y)`` and its pieces; call ``backward()`` on the first.

        ``criterion(output, y)`` must return a scalar. Forward hooks on ``layer`` live only during this
        call (removed on return and on error).
        """
        if not self.active:
            output = self.model(x)
            clean = criterion(output, y)
            return clean, AFANPieces(output, clean, None)
        snapshot = None if self._checked else _buffers(self.model)
        try:
            result = self._loss(x, y, criterion)
        except Exception:
            if snapshot is not None:  # a bad split found on the first call: leave the model as it was
                _restore(self.model, snapshot)
            raise
        self._checked = True
        return result

    # ------------------------------------------------------------------ internals
    def _loss(self, x: Any, y: Any, criterion: Criterion) -> tuple[torch.Tensor, AFANPieces]:
        captured: list[torch.Tensor] = []

        def capture(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output)

        with _hooked(self.module, capture):
            output = self.model(x)
        if not captured:
            raise ValueError(
                f"layer {self.layer!r} did not run in the model's forward pass; choose a module on the path "
                "from the input to the output"
            )
        if len(captured) > 1:
            raise ValueError(
                f"layer {self.layer!r} ran {len(captured)} times in one forward pass; A-FAN needs a module "
                "that runs once (split at a module that is not shared)"
            )
        h = captured[0]
        if not isinstance(h, torch.Tensor) or not h.is_floating_point():
            raise ValueError(
                f"layer {self.layer!r} returns {type(h).__name__}, not a floating-point tensor; choose a "
                "module whose output is one tensor"
            )
        clean = criterion(output, y)
        h = h.detach()
        delta_dtype = torch.float32 if h.dtype in (torch.float16, torch.bfloat16) else h.dtype

        attack_losses = None
        if self.direction == "random" and not self._checked:  # the attack checks the path; check it once here
            probe = torch.zeros(h.shape, device=h.device, dtype=delta_dtype, requires_grad=True)
            self._check_path(criterion(self._run_from(x, h + probe), y), probe)
        if self.direction == "random":
            radius = self.steps * self.step_size if self.eps is None else min(self.eps, self.steps * self.step_size)
            delta = radius * torch.randn(h.shape, device=h.device, dtype=delta_dtype).sign()
        else:
            delta, attack_losses = self._attack(x, y, criterion, h, delta_dtype)

        losses = []
        for s in self.strengths:
            feature = normalize_feature(h, h + s * delta, self.normalize)
            losses.append(criterion(self._run_from(x, feature), y))
        adversarial = torch.stack([loss.float() for loss in losses]).mean()
        total = (1.0 - self.adv_weight) * clean + self.adv_weight * adversarial
        pieces = AFANPieces(output, clean, adversarial, delta.abs().mean(), attack_losses)
        return total, pieces

    def _attack(
        self, x: Any, y: Any, criterion: Criterion, h: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.random_start:
            radius = self.eps if self.eps is not None else self.step_size
            delta = torch.empty(h.shape, device=h.device, dtype=dtype).uniform_(-radius, radius)
        else:
            delta = torch.zeros(h.shape, device=h.device, dtype=dtype)
        losses = []
        for _ in range(self.steps):
            delta.requires_grad_(True)
            loss = criterion(self._run_from(x, h + delta), y)
            grad = self._check_path(loss, delta)
            losses.append(loss.detach().float())
            delta = delta.detach() + self.step_size * grad.sign()
            if self.eps is not None:
                delta = delta.clamp(-self.eps, self.eps)
        return delta.detach(), torch.stack(losses)

    def _check_path(self, loss: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``∇_δ loss``; a ``ValueError`` when the loss does not depend on ``δ`` (the split is off the path)."""
        (grad,) = torch.autograd.grad(loss, delta, allow_unused=True)
        if grad is None:
            raise ValueError(
                f"layer {self.layer!r} is not on the path to the output: the loss does not depend on its "
                "output; choose a module the output is computed from"
            )
        return grad

    def _run_from(self, x: Any, feature: torch.Tensor) -> Any:
        """The model's output with ``layer``'s output replaced by ``feature``; the part before the split runs
        without a graph, the part after it with one; BatchNorm statistics per ``bn``."""

        def swap(_module: nn.Module, _inputs: Any, _output: Any) -> torch.Tensor:
            torch.set_grad_enabled(True)
            return feature

        with contextlib.ExitStack() as stack:
            stack.enter_context(_hooked(self.module, swap))
            if self.bn == "freeze":
                stack.enter_context(_frozen_running_stats(self.model))
            no_sync = getattr(self.model, "no_sync", None)
            if callable(no_sync):  # DDP: the extra passes do not prepare a gradient all-reduce of their own
                stack.enter_context(no_sync())
            stack.enter_context(torch.no_grad())
            return self.model(x)


# ---------------------------------------------------------------------- helpers
def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def _resolve(model: nn.Module, layer: Any) -> nn.Module:
    if not isinstance(layer, str):
        raise TypeError(f"layer: expected a module name (str), got {type(layer).__name__}")
    modules = dict(model.named_modules())
    inner = getattr(model, "module", None)
    if layer not in modules and isinstance(inner, nn.Module) and f"module.{layer}" in modules:
        layer = f"module.{layer}"
    if layer == "" or layer not in modules or (isinstance(inner, nn.Module) and modules[layer] is inner):
        names = [name for name in modules if name and modules[name] is not inner]
        what = "the whole model is not a split point" if layer in modules else f"unknown module {layer!r}"
        raise ValueError(f"layer: {what}; choose one of the model's modules: {names}")
    return modules[layer]


@contextlib.contextmanager
def _hooked(module: nn.Module, hook: Callable[..., Any]) -> Iterator[None]:
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Training-mode norm layers normalize with batch statistics but do not update running ones."""
    layers = [m for m in model.modules() if isinstance(m, _NormBase) and m.training and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in model.named_buffers()}


@torch.no_grad()
def _restore(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    for name, b in model.named_buffers():
        if name in snapshot:
            b.copy_(snapshot[name])
