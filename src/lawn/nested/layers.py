"""Nested layers: ``nn.Linear`` / ``nn.Conv2d`` whose output units carry a learned order and a width mask.

``y = mask ⊙ norm(layer(x))``: the output units are split into ``groups_of_units`` ordered groups, and the
:class:`~lawn.nested.ordering.VariationalOrdering` draws (or, after :func:`~lawn.nested.set_width`, fixes) which
groups are kept. ``norm`` (optional, e.g. ``nn.BatchNorm2d(out_channels)``) runs *before* the mask: a BatchNorm
after a masked layer would turn the dropped (zero) channels into its bias ``β`` and the narrower network would no
longer be a sub-network. Put it inside, and the dropped channels stay exact zeros through ReLU and pooling.

With ``weight_noise=True`` the weights are Gaussian, ``w ~ N(θ, σ²)`` with a learned ``log σ²`` per weight, sampled
by the local reparametrization trick (Kingma et al. 2015): the pre-activation is ``μ + √v·ε`` with ``μ = x∗θ`` and
``v = x²∗σ²``. Their KL to the log-uniform prior uses the sparse variational dropout approximation (Molchanov et al.
2017), ``−KL ≈ k₁·sigmoid(k₂ + k₃ log α) − ½ log(1 + 1/α) − k₁`` with ``α = σ²/θ²``, and each output channel's KL
is weighted by the probability that the channel is kept. Weights are sampled in training and inside
:func:`~lawn.nested.mc_predict`; a plain eval forward uses the means ``θ``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lawn._checks import is_int
from lawn.nested.ordering import VariationalOrdering, groups_kept

__all__ = ["NestedConv2d", "NestedDropout", "NestedLinear", "NestedModule"]

_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695


def _check_groups(units: int, groups_of_units: int, name: str) -> int:
    if not is_int(groups_of_units) or groups_of_units < 1:
        raise ValueError(f"groups_of_units must be a positive int, got {groups_of_units!r}")
    if units % groups_of_units:
        divisors = [d for d in range(1, units + 1) if units % d == 0]
        raise ValueError(f"groups_of_units={groups_of_units} does not divide {name}={units}; use one of {divisors}")
    return units // groups_of_units


def _mask_shape(mask: torch.Tensor, out: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Broadcast a ``(B or 1, C)`` mask over ``out`` whose channels are at ``channel_dim``."""
    shape = [1] * out.dim()
    shape[0], shape[channel_dim] = mask.shape[0], mask.shape[1]
    return mask.reshape(shape)


class NestedModule(nn.Module):
    """What every nested piece shares: an ordering of ``groups`` groups of ``units`` units, and a width."""

    ordering: VariationalOrdering
    units: int
    sample_weights: bool = False

    @property
    def width(self) -> float | None:
        return self.ordering.width

    def units_kept(self, width: float) -> int:
        """Output units kept at width ``p``: ``(F + ⌊D·p⌋) · units_per_group``."""
        o = self.ordering
        return groups_kept(o.groups, o.always_on, width) * (self.units // o.groups)

    def unit_mask(self, batch: int) -> torch.Tensor:
        """The current mask over the output units, ``(batch or 1, units)``."""
        return torch.repeat_interleave(self.ordering.group_mask(batch), self.units // self.ordering.groups, dim=1)

    def unit_keep_probabilities(self) -> torch.Tensor:
        """``P(unit kept)``, shape ``(units,)``."""
        return torch.repeat_interleave(self.ordering.keep_probabilities(), self.units // self.ordering.groups)

    def kl(self) -> torch.Tensor:
        """``KL(q(z) ‖ p(z))`` plus the keep-probability-weighted weight KL (zero without weight noise)."""
        return self.ordering_kl() + self.weight_kl()

    def ordering_kl(self) -> torch.Tensor:
        return self.ordering.kl()

    def weight_kl(self) -> torch.Tensor:
        return self.ordering.keep_logits.new_zeros(())


class _NestedWeights(NestedModule):
    """Shared by NestedLinear and NestedConv2d: weight noise, the norm and the mask."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    channel_dim: int
    #: a variance is not a weight: lawn.all_layer_weights leaves it out (lawn.discovery.layers)
    lawn_not_weights = ("log_sigma2",)

    def _setup(
        self,
        units: int,
        name: str,
        groups_of_units: int,
        always_on: int,
        prior: float,
        temperature: float,
        weight_noise: bool,
        learn_ordering: bool,
        norm: nn.Module | None,
    ) -> None:
        _check_groups(units, groups_of_units, name)
        self.units = units
        self.ordering = VariationalOrdering(groups_of_units, always_on, prior, temperature, learn=learn_ordering)
        self.weight_noise = bool(weight_noise)
        if self.weight_noise:
            self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, -10.0))
        else:
            self.register_parameter("log_sigma2", None)
        if norm is not None and not isinstance(norm, nn.Module):
            raise TypeError(f"norm must be an nn.Module (e.g. nn.BatchNorm2d({units})) or None, got {norm!r}")
        self.norm = norm

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._op(x, self.weight, self.bias)
        if self.weight_noise and (self.training or self.sample_weights):
            var = self._op(x * x, self.log_sigma2.exp(), None)
            out = out + torch.sqrt(var + 1e-8) * torch.randn_like(out)
        if self.norm is not None:
            out = self.norm(out)
        if out.dim() == 1 or (self.channel_dim == 1 and out.dim() == 3):  # unbatched Linear / Conv2d input
            mask = self.unit_mask(1)[0].to(out.dtype)
            return out * (mask if out.dim() == 1 else mask.reshape(-1, 1, 1))
        return out * _mask_shape(self.unit_mask(out.shape[0]).to(out.dtype), out, self.channel_dim)

    def log_alpha(self) -> torch.Tensor:
        """``log α = log σ² − log θ²``, clipped to [−10, 10]."""
        return (self.log_sigma2 - torch.log(self.weight * self.weight + 1e-8)).clamp(-10.0, 10.0)

    def weight_kl(self) -> torch.Tensor:
        """``Σ_c P(c kept) · Σ_{w in channel c} KL(q(w) ‖ p(w))`` (sparse variational dropout approximation)."""
        if not self.weight_noise:
            return self.weight.new_zeros(())
        log_alpha = self.log_alpha()
        kl = _K1 - _K1 * torch.sigmoid(_K2 + _K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)
        per_channel = kl.reshape(self.units, -1).sum(1)
        return torch.sum(self.unit_keep_probabilities() * per_channel)


class NestedLinear(_NestedWeights, nn.Linear):
    """``nn.Linear`` with ordered, maskable output units (see the module docstring for the math).

    Args (besides ``nn.Linear``'s): ``groups_of_units`` (``G``, must divide ``out_features``), ``always_on``
    (``F`` groups never dropped), ``prior`` (``π``, keep probability per stick; fixed-rate nested dropout uses it as
    its rate ``1 − π``), ``temperature`` (Gumbel-softmax ``τ``), ``weight_noise``, ``learn_ordering`` (``False``:
    fixed-rate nested dropout), ``norm`` (a module applied before the mask).
    """

    channel_dim = -1

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        groups_of_units: int = 4,
        always_on: int = 1,
        prior: float = 0.9,
        temperature: float = 0.5,
        weight_noise: bool = True,
        learn_ordering: bool = True,
        norm: nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._setup(
            out_features, "out_features", groups_of_units, always_on, prior, temperature, weight_noise,
            learn_ordering, norm,
        )  # fmt: skip

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


class NestedConv2d(_NestedWeights, nn.Conv2d):
    """``nn.Conv2d`` with ordered, maskable output channels (``groups=1`` only; see the module docstring).

    Args (besides ``nn.Conv2d``'s): as :class:`NestedLinear`; ``groups_of_units`` must divide ``out_channels``.
    """

    channel_dim = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        groups_of_units: int = 4,
        always_on: int = 1,
        prior: float = 0.9,
        temperature: float = 0.5,
        weight_noise: bool = True,
        learn_ordering: bool = True,
        norm: nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if groups != 1:
            raise ValueError(
                f"NestedConv2d supports groups=1 only (got groups={groups}): a grouped conv's "
                "channels cannot be cut to a prefix; use groups_of_units for the ordering groups"
            )
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device=device, dtype=dtype,
        )  # fmt: skip
        self._setup(
            out_channels, "out_channels", groups_of_units, always_on, prior, temperature, weight_noise,
            learn_ordering, norm,
        )  # fmt: skip

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, weight, bias)


class NestedDropout(NestedModule):
    """Fixed-rate nested dropout (Rippel et al. 2014), the baseline the Bayesian ordering improves on.

    Multiplies channel dimension ``dim`` (1 for conv maps, −1 for features) by a downhill mask whose cut index has
    the stick-breaking distribution with every stick dropped at ``rate`` (keep ``1 − rate``), in training and in
    eval alike unless :func:`~lawn.nested.set_width` fixes a width. Place it after the activation; ``slice_model``
    then cuts the preceding ``Conv2d``/``Linear`` (and any BatchNorm between them) to the kept channels.
    """

    def __init__(
        self, num_channels: int, groups_of_units: int = 4, always_on: int = 1, rate: float = 0.1, dim: int = 1
    ) -> None:
        super().__init__()
        _check_groups(num_channels, groups_of_units, "num_channels")
        if not 0.0 < float(rate) < 1.0:
            raise ValueError(f"rate must be in (0, 1) (the drop probability of each stick), got {rate!r}")
        self.units, self.dim, self.rate = num_channels, dim, float(rate)
        self.ordering = VariationalOrdering(groups_of_units, always_on, prior=1.0 - self.rate, learn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.dim] != self.units:
            raise ValueError(
                f"NestedDropout(num_channels={self.units}) got {x.shape[self.dim]} channels at "
                f"dim {self.dim} (input shape {tuple(x.shape)})"
            )
        dim = self.dim % x.dim()
        return x * _mask_shape(self.unit_mask(x.shape[0]).to(x.dtype), x, dim)

    def extra_repr(self) -> str:
        return f"num_channels={self.units}, rate={self.rate}, dim={self.dim}"
