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
batch statistics (mean and std over every dimension but the channel dimension). The channel dimension is
``channel_dim``, or inferred from the layers up to the split: 1 after a conv / BatchNorm / GroupNorm (maps
``(B, C, …)``), the last after a Linear / LayerNorm / Embedding (token features ``(B, T, H)``); 1 when
nothing tells. With ``w = 0.5``, one
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
clean batches would give. The released code (``"update"``) computes ``h`` once, so the BatchNorm layers
before the split update once per call, and lets every pass after the split update the ones after it: their
statistics used at test time then mix in adversarial features, and each step counts ``steps + 2`` updates
of the same batch, which shortens the running average's memory by that factor. ``"update"`` reproduces
exactly that (our extra passes rerun the part before the split, but its BatchNorm layers do not update
there). Evaluation runs on clean data, so we keep its statistics clean.

Gradients: the attack needs ``∇_δ``, so it runs with gradients on even inside ``torch.no_grad()``; the
returned loss then carries no graph (an evaluation of the A-FAN loss). Keyword arguments of
:meth:`AFAN.loss` (``attention_mask=…``) reach the model in every pass.
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

from lawn._checks import is_int, is_number

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


def normalize_feature(
    clean: torch.Tensor, adversarial: torch.Tensor, mode: Normalize, channel_dim: int = 1
) -> torch.Tensor:
    """The feature fed after the split: ``adversarial`` (``None``), or ``clean`` with the adversarial
    feature's moments over channels (dim ``channel_dim``) per sample and position (``"position"``) or per
    channel over the batch and positions (``"batch"``)."""
    if mode is None:
        return adversarial
    if not -clean.dim() <= channel_dim < clean.dim() or channel_dim % clean.dim() == 0:
        raise ValueError(
            f"channel_dim: {channel_dim} is not a channel dimension of a feature of shape {tuple(clean.shape)} "
            "(dim 0 is the batch)"
        )
    channel_dim %= clean.dim()
    if mode == "position":
        return moment_swap(clean, adversarial, (channel_dim,))
    return moment_swap(clean, adversarial, [d for d in range(clean.dim()) if d != channel_dim])


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
        channel_dim: the feature's channel dimension for ``normalize`` (``None``: inferred, see the module doc).
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
        channel_dim: int | None = None,
    ) -> None:
        _check_attack(model, steps, step_size, eps, random_start, off="A-FAN")
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
        if channel_dim is not None and (not is_int(channel_dim) or channel_dim == 0):
            raise ValueError(
                f"channel_dim: expected None (inferred) or a non-zero int (0 is the batch), got {channel_dim!r}"
            )
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
        self.channel_dim = _infer_channel_dim(model, self.module) if channel_dim is None else channel_dim
        self._checked = False
        self._grad_after_split = True

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

    def loss(self, x: Any, y: Any, criterion: Criterion, **model_kwargs: Any) -> tuple[torch.Tensor, AFANPieces]:
        """The A-FAN training loss on batch ``(x, y)`` and its pieces; call ``backward()`` on the first.

        ``criterion(output, y)`` must return a scalar; every pass calls ``model(x, **model_kwargs)``. Forward
        hooks on ``layer`` live only during this call (removed on return and on error). Under
        ``torch.no_grad()`` the attack still gets its gradient and the loss comes back without a graph.
        """
        if not self.active:
            output = self.model(x, **model_kwargs)
            clean = criterion(output, y)
            return clean, AFANPieces(output, clean, None)
        snapshot = None if self._checked else _buffers(self.model)
        self._grad_after_split = torch.is_grad_enabled()
        try:
            result = self._loss(x, y, criterion, model_kwargs)
        except Exception:
            if snapshot is not None:  # a bad split found on the first call: leave the model as it was
                _restore(self.model, snapshot)
            raise
        self._checked = True
        return result

    # ------------------------------------------------------------------ internals
    def _loss(self, x: Any, y: Any, criterion: Criterion, kwargs: dict[str, Any]) -> tuple[torch.Tensor, AFANPieces]:
        captured: list[torch.Tensor] = []

        def capture(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output)

        with _hooked(self.module, capture):
            output = self.model(x, **kwargs)
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
            with torch.enable_grad():
                probe = torch.zeros(h.shape, device=h.device, dtype=delta_dtype, requires_grad=True)
                self._check_path(criterion(self._run_from(x, kwargs, h + probe, grad=True), y), probe)
        if self.direction == "random":
            radius = self.steps * self.step_size if self.eps is None else min(self.eps, self.steps * self.step_size)
            delta = radius * torch.randn(h.shape, device=h.device, dtype=delta_dtype).sign()
        else:
            delta, attack_losses = self._attack(x, kwargs, y, criterion, h, delta_dtype)

        losses = []
        for s in self.strengths:
            feature = normalize_feature(h, h + s * delta, self.normalize, self.channel_dim)
            losses.append(criterion(self._run_from(x, kwargs, feature, grad=self._grad_after_split), y))
        adversarial = torch.stack([loss.float() for loss in losses]).mean()
        total = (1.0 - self.adv_weight) * clean + self.adv_weight * adversarial
        pieces = AFANPieces(output, clean, adversarial, delta.abs().mean(), attack_losses)
        return total, pieces

    @torch.enable_grad()
    def _attack(
        self, x: Any, kwargs: dict[str, Any], y: Any, criterion: Criterion, h: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        delta = _start(h, dtype, self.random_start, self.eps, self.step_size)
        losses = []
        for _ in range(self.steps):
            delta.requires_grad_(True)
            loss = criterion(self._run_from(x, kwargs, h + delta, grad=True), y)
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

    def _run_from(self, x: Any, kwargs: dict[str, Any], feature: torch.Tensor, grad: bool) -> Any:
        """The model's output with ``layer``'s output replaced by ``feature``; the part before the split runs
        without a graph, the part after it with one if ``grad``; BatchNorm statistics per ``bn`` (``"update"``:
        only the layers after the split update)."""
        frozen: list[nn.Module] = []

        def swap(_module: nn.Module, _inputs: Any, _output: Any) -> torch.Tensor:
            torch.set_grad_enabled(grad)
            if self.bn == "update":  # past the split: its BatchNorm layers update, as in the released code
                for m in frozen:
                    m.track_running_stats = True
                frozen.clear()
            return feature

        with contextlib.ExitStack() as stack:
            stack.enter_context(_hooked(self.module, swap))
            stack.enter_context(_frozen_running_stats(self.model, frozen))
            no_sync = getattr(self.model, "no_sync", None)
            if callable(no_sync):  # DDP: the extra passes do not prepare a gradient all-reduce of their own
                stack.enter_context(no_sync())
            stack.enter_context(torch.no_grad())
            return self.model(x, **kwargs)


# ---------------------------------------------------------------------- helpers
def _number(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def _start(t: torch.Tensor, dtype: torch.dtype, random: bool, eps: float | None, step_size: float) -> torch.Tensor:
    """The attack's first perturbation of ``t``: uniform in ``±eps`` (``±step_size`` unbounded) or zero."""
    if not random:
        return torch.zeros(t.shape, device=t.device, dtype=dtype)
    radius = eps if eps is not None else step_size
    return torch.empty(t.shape, device=t.device, dtype=dtype).uniform_(-radius, radius)


def _check_attack(model: Any, steps: Any, step_size: Any, eps: Any, random_start: Any, *, off: str) -> None:
    """The options every sign-gradient attack here shares (feature space or input space), checked before use."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not is_int(steps) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0 (0 turns {off} off), got {steps!r}")
    if not _positive(step_size):
        raise ValueError(f"step_size: expected a finite number > 0, got {step_size!r}")
    if eps is not None and not _positive(eps):
        raise ValueError(f"eps: expected None (no bound) or a finite number > 0, got {eps!r}")
    if not isinstance(random_start, bool):
        raise TypeError(f"random_start: expected True or False, got {random_start!r}")


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
def _frozen_running_stats(model: nn.Module, frozen: list[nn.Module] | None = None) -> Iterator[None]:
    """Training-mode norm layers normalize with batch statistics but do not update running ones; ``frozen``
    (if given) lists them while frozen, so a hook can let some update again."""
    layers = [m for m in model.modules() if isinstance(m, _NormBase) and m.training and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    if frozen is not None:
        frozen.extend(layers)
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


_CHANNEL_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                  _NormBase, nn.GroupNorm)  # fmt: skip
_CHANNEL_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.MultiheadAttention)


def _infer_channel_dim(model: nn.Module, split: nn.Module) -> int:
    """1 or −1: the kind of the last channel-first / channel-last layer registered up to the end of ``split``
    (Hugging Face's ``Conv1D`` and RMS norms count as channel-last); 1 when there is none."""
    inside = {id(m) for m in split.modules()}
    dim = 1
    reached = False
    for m in model.modules():
        if reached and id(m) not in inside:
            break
        if m is split:
            reached = True
        if isinstance(m, _CHANNEL_FIRST):
            dim = 1
        elif isinstance(m, _CHANNEL_LAST) or type(m).__name__ in ("Conv1D", "RMSNorm", "LlamaRMSNorm"):
            dim = -1
    return dim


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in model.named_buffers()}


@torch.no_grad()
def _restore(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    for name, b in model.named_buffers():
        if name in snapshot:
            b.copy_(snapshot[name])


class InputAdversarial:
    """Input-space adversarial training: the AdvProp-style control for A-FAN (PGD on the input, not a feature).

    With ``w = adv_weight`` the training loss is ``(1 − w) · ℓ(f(x), y) + w · ℓ(f(x + δ), y)``, where ``δ`` comes
    from ``steps`` steps of sign-gradient ascent on the whole network's loss, from 0 (or ``U(−r, r)``, ``r = eps``
    or ``step_size`` when ``eps`` is ``None``)::

        δ ← clip_eps(δ + step_size · sign(∇_δ ℓ(f(x + δ), y)))

    the same steps / step size / bound semantics as :class:`AFAN`, with the split moved to the input. Per call: one
    clean pass with backward, ``steps`` attack passes (forward and backward to the input, no parameter gradients)
    and one adversarial pass (backward later): ``steps + 2`` passes of the whole network. Inputs are not clamped to
    a pixel range (the harness standardizes them). Unlike AdvProp there is no auxiliary BatchNorm: the extra passes
    normalize with their own batch statistics, and ``bn="freeze"`` keeps the running statistics those of the clean
    batches (``"update"`` lets every pass update them).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        steps: int = 5,
        step_size: float = 0.5 / 255,
        eps: float | None = None,
        random_start: bool = False,
        adv_weight: float = 0.5,
        bn: BNMode = "freeze",
    ) -> None:
        _check_attack(model, steps, step_size, eps, random_start, off="the attack")
        if not _number(adv_weight) or not 0.0 <= adv_weight <= 1.0:
            raise ValueError(f"adv_weight: expected a number in [0, 1], got {adv_weight!r}")
        if bn not in ("freeze", "update"):
            raise ValueError(f"bn: expected 'freeze' or 'update', got {bn!r}")
        self.model = model
        self.steps, self.step_size = steps, float(step_size)
        self.eps = None if eps is None else float(eps)
        self.random_start, self.adv_weight, self.bn = random_start, float(adv_weight), bn

    @property
    def active(self) -> bool:
        """``False`` when the configuration reduces to the plain loss (``steps == 0`` or ``adv_weight == 0``)."""
        return self.steps > 0 and self.adv_weight > 0.0

    @property
    def extra_passes(self) -> int:
        """Whole-network passes beyond plain training's one: ``steps`` attack passes and one adversarial pass."""
        return self.steps + 1 if self.active else 0

    def perturbation(self, x: torch.Tensor, y: Any, criterion: Criterion) -> tuple[torch.Tensor, torch.Tensor]:
        """``δ`` (detached, ``|δ| ≤ eps`` elementwise when bounded) and the loss before each ascent step."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x: input-space PGD needs a floating-point input tensor, got {type(x).__name__}")
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        x = x.detach()
        delta = _start(x, dtype, self.random_start, self.eps, self.step_size)
        losses = []
        with self._stats(), torch.enable_grad():
            for _ in range(self.steps):
                delta.requires_grad_(True)
                loss = criterion(self.model((x + delta).to(x.dtype)), y)
                (grad,) = torch.autograd.grad(loss, delta)
                losses.append(loss.detach().float())
                delta = delta.detach() + self.step_size * grad.sign()
                if self.eps is not None:
                    delta = delta.clamp(-self.eps, self.eps)
        return delta.detach(), torch.stack(losses) if losses else torch.zeros(0)

    def loss(self, x: torch.Tensor, y: Any, criterion: Criterion) -> tuple[torch.Tensor, AFANPieces]:
        """The training loss on batch ``(x, y)`` and its pieces (as :meth:`AFAN.loss`); call ``backward()`` on the
        first."""
        output = self.model(x)
        clean = criterion(output, y)
        if not self.active:
            return clean, AFANPieces(output, clean, None)
        delta, attack_losses = self.perturbation(x, y, criterion)
        with self._stats():
            adversarial = criterion(self.model((x.detach() + delta).to(x.dtype)), y)
        total = (1.0 - self.adv_weight) * clean + self.adv_weight * adversarial
        return total, AFANPieces(output, clean, adversarial, delta.abs().mean(), attack_losses)

    def _stats(self) -> contextlib.AbstractContextManager[None]:
        return _frozen_running_stats(self.model) if self.bn == "freeze" else contextlib.nullcontext()
