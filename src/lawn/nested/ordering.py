"""The variational ordering unit: a learned "downhill" distribution over where a layer's channels are cut.

A layer's output units are split into ``G`` ordered groups; the first ``F`` (``always_on``) are always kept. The cut
index ``z ∈ {0, …, D}`` (``D = G − F``) says how many of the remaining groups are kept. Its distribution is a stick
breaking one with per-index keep probabilities ``β_i = sigmoid(r_i)``::

    q(z = k) = (Π_{i<k} β_i) (1 − β_k)      for k < D,        q(z = D) = Π_{i<D} β_i

and the prior ``p(z)`` has the same form with a fixed ``β_i = π``. A group ``j`` of the droppable ones is kept iff
``z > j``, so ``mask_j = 1 − Σ_{k≤j} s_k`` for a one-hot ``s = onehot(z)``: a non-increasing ("downhill") mask.
During training ``s`` is a straight-through Gumbel-softmax sample, which gives gradients to ``r``.

Fixed-rate nested dropout (Rippel et al. 2014) is the same distribution with ``β`` frozen: ``learn=False``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lawn._checks import is_int, is_number

__all__ = [
    "VariationalOrdering",
    "check_width",
    "downhill_kl",
    "downhill_log_probs",
    "downhill_mask",
    "groups_kept",
    "straight_through_cut",
]


def check_width(width: float | None, name: str = "width") -> float | None:
    """``width`` itself if it is ``None`` or a number in [0, 1]; a ``ValueError`` naming it otherwise."""
    if width is None:
        return None
    if not is_number(width):
        raise TypeError(f"{name} must be a float in [0, 1] or None (sampling), got {width!r}")
    if not 0.0 <= float(width) <= 1.0 or math.isnan(float(width)):
        raise ValueError(f"{name} must be in [0, 1] (the kept fraction of the droppable groups), got {width!r}")
    return float(width)


def groups_kept(groups: int, always_on: int, width: float) -> int:
    """Groups kept at width ``p``: ``F + ⌊D·p⌋`` with ``D = G − F`` (a tiny tolerance makes 0.5·4 exactly 2)."""
    droppable = groups - always_on
    return always_on + min(droppable, int(math.floor(droppable * check_width(width) + 1e-9)))


def downhill_log_probs(keep_logits: torch.Tensor) -> torch.Tensor:
    """``log q(z = k)`` for ``k = 0 … D`` from the ``D`` keep logits ``r`` (``β = sigmoid(r)``), in log space.

    ``log q(k) = Σ_{i<k} log β_i + log(1 − β_k)`` (``k < D``), ``log q(D) = Σ_i log β_i``; sums to 1 exactly.
    """
    log_keep = F.logsigmoid(keep_logits)  # log β_i
    log_stop = F.logsigmoid(-keep_logits)  # log (1 − β_i)
    prefix = torch.cat([log_keep.new_zeros(1), torch.cumsum(log_keep, 0)])  # Σ_{i<k} log β_i, k = 0 … D
    return prefix + torch.cat([log_stop, log_stop.new_zeros(1)])


def downhill_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``KL(q ‖ p) = Σ_k q_k (log q_k − log p_k)`` for two categorical distributions given by log-probabilities."""
    return torch.sum(log_q.exp() * (log_q - log_p))


def straight_through_cut(log_probs: torch.Tensor, temperature: float, samples: int) -> torch.Tensor:
    """``samples`` straight-through Gumbel-softmax one-hots over the cut index, shape ``(samples, D + 1)``.

    ``y = softmax((log q + g) / τ)`` with Gumbel noise ``g``; the forward value is ``onehot(argmax y)`` and the
    gradient is that of ``y``. The softmax takes *log*-probabilities; the authors' released code passes the
    probabilities ``q`` themselves, which samples from ``softmax(q)`` instead of ``q`` (nearly uniform when ``D``
    is large). We do it the correct way.
    """
    logits = log_probs.expand(samples, -1)
    gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)))
    soft = torch.softmax((logits + gumbel) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def downhill_mask(one_hot: torch.Tensor) -> torch.Tensor:
    """Masks of the ``D`` droppable groups from one-hots over ``z ∈ {0…D}``: ``mask_j = 1 − Σ_{k≤j} s_k``."""
    return 1.0 - torch.cumsum(one_hot, dim=-1)[..., :-1]


class VariationalOrdering(nn.Module):
    """The ordering unit of one layer: samples (or fixes) which of its ``groups`` of units are kept.

    Args:
        groups: ``G``, the number of ordered groups of units.
        always_on: ``F``, how many leading groups are never dropped (``0 ≤ F ≤ G``).
        prior: ``π``, the prior keep probability of each stick (also the initial ``β``), in (0, 1).
        temperature: ``τ`` of the straight-through Gumbel-softmax.
        learn: learn ``β`` (the Bayesian ordering); ``False`` is fixed-rate nested dropout with ``β = π``
            (dropout rate ``1 − π`` per stick) and no gradient.

    ``width``: ``None`` samples a cut per example; a number ``p ∈ [0, 1]`` keeps ``F + ⌊D·p⌋`` groups. It is
    saved in ``state_dict`` (``…ordering.width``, fp64, −1 for ``None``) and restored on load; a checkpoint saved
    before the width was kept there loads too and leaves the width as it is.
    """

    def __init__(
        self, groups: int, always_on: int = 1, prior: float = 0.9, temperature: float = 0.5, learn: bool = True
    ) -> None:
        super().__init__()
        if not is_int(groups) or groups < 1:
            raise ValueError(f"groups_of_units must be a positive int, got {groups!r}")
        if not is_int(always_on) or not 0 <= always_on <= groups:
            raise ValueError(f"always_on must be an int in [0, groups_of_units={groups}], got {always_on!r}")
        if not 0.0 < float(prior) < 1.0:
            raise ValueError(f"prior must be a keep probability in (0, 1), got {prior!r}")
        if not float(temperature) > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.groups, self.always_on, self.prior = groups, always_on, float(prior)
        self.temperature, self.learn = float(temperature), bool(learn)
        self.width: float | None = None
        init = torch.full((groups - always_on,), math.log(self.prior / (1.0 - self.prior)))
        if self.learn:
            self.keep_logits = nn.Parameter(init)
        else:
            self.register_buffer("keep_logits", init)
        self.register_buffer("prior_logits", init.clone())

    @property
    def droppable(self) -> int:
        return self.groups - self.always_on

    def log_probs(self) -> torch.Tensor:
        """``log q(z)``, shape ``(D + 1,)``."""
        return downhill_log_probs(self.keep_logits)

    def kl(self) -> torch.Tensor:
        """``KL(q(z) ‖ p(z))`` (zero for fixed-rate nested dropout, where ``q = p``)."""
        if not self.learn:
            return self.keep_logits.new_zeros(())
        return downhill_kl(self.log_probs(), downhill_log_probs(self.prior_logits))

    def keep_probabilities(self) -> torch.Tensor:
        """``P(group j kept)``, shape ``(G,)``: 1 for the always-on groups, ``Π_{i≤j} β_i`` for droppable ``j``."""
        kept = torch.cumsum(F.logsigmoid(self.keep_logits), 0).exp()
        return torch.cat([kept.new_ones(self.always_on), kept])

    def group_mask(self, samples: int) -> torch.Tensor:
        """Masks over the groups, shape ``(samples, G)`` when sampling or ``(1, G)`` at a fixed width."""
        device, dtype = self.keep_logits.device, self.keep_logits.dtype
        if self.width is not None:
            mask = torch.zeros(1, self.groups, device=device, dtype=dtype)
            mask[:, : groups_kept(self.groups, self.always_on, self.width)] = 1.0
            return mask
        if self.droppable == 0:
            return torch.ones(1, self.groups, device=device, dtype=dtype)
        if self.learn:
            one_hot = straight_through_cut(self.log_probs(), self.temperature, samples)
        else:
            cut = torch.multinomial(self.log_probs().exp(), samples, replacement=True)
            one_hot = F.one_hot(cut, self.droppable + 1).to(dtype)
        on = torch.ones(one_hot.shape[0], self.always_on, device=device, dtype=dtype)
        return torch.cat([on, downhill_mask(one_hot)], dim=-1)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        width = -1.0 if self.width is None else self.width
        destination[prefix + "width"] = torch.tensor(width, dtype=torch.float64)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        key = prefix + "width"
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key in state_dict:  # absent from checkpoints saved before the width was kept: the width stays
            value = float(state_dict[key])
            self.width = None if value == -1.0 else check_width(value)

    def extra_repr(self) -> str:
        kind = "learned" if self.learn else "fixed-rate"
        return f"groups={self.groups}, always_on={self.always_on}, prior={self.prior}, {kind}, width={self.width}"
