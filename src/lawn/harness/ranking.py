"""A synthetic implicit-feedback ranking task with planted user/item structure, and its metrics.

Generation (all from one seed): user factors ``u ∈ R^{U×d}``, item factors ``v ∈ R^{I×d}`` (standard normal),
item popularity ``b ~ N(0, popularity²)``; the affinity of user ``i`` for item ``j`` is
``s_ij = ⟨u_i, v_j⟩/√d + b_j``. Each user interacts with ``positives_per_user`` distinct items drawn with
probability ∝ ``exp(s_ij / temperature)``. Leave-one-out split: one interaction per user is the test item,
another the validation item, the rest are training pairs. Each held-out item is ranked against
``eval_negatives`` items the user never interacted with (fixed at generation, the usual NCF protocol).

Metrics over the candidate lists (column 0 = the held-out positive):
``AUC = mean_users mean_negatives [s_neg < s_pos] + ½[s_neg = s_pos]`` and
``HR@10 = mean_users [#{neg : s_neg ≥ s_pos} < 10]`` (ties count against the positive).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class RankingData:
    """Training pairs and fixed candidate lists; ``known`` marks each user's training positives."""

    train_pairs: torch.Tensor  # P × 2 (user, item), int64
    known: torch.Tensor  # U × I bool: training positives (never drawn as training negatives)
    val_candidates: torch.Tensor  # U × (1 + n) items, column 0 = held-out validation positive
    test_candidates: torch.Tensor  # U × (1 + n) items, column 0 = held-out test positive
    num_users: int
    num_items: int
    task: str = field(default="ranking", init=False)

    @property
    def train_size(self) -> int:
        return len(self.train_pairs)


def make_ranking_data(
    *,
    seed: int,
    users: int,
    items: int,
    factors: int,
    positives_per_user: int,
    eval_negatives: int,
    temperature: float,
    popularity: float,
) -> RankingData:
    """Generate the task described in the module docstring."""
    if users < 1 or items < 2 or factors < 1:
        raise ValueError(f"data_options: need users >= 1, items >= 2, factors >= 1 (got {users}, {items}, {factors})")
    if positives_per_user < 3:
        raise ValueError(f"data_options.positives_per_user: must be >= 3 (got {positives_per_user})")
    if items - positives_per_user < eval_negatives or eval_negatives < 1:
        raise ValueError(
            f"data_options.eval_negatives: need 1 <= eval_negatives <= items - positives_per_user "
            f"(got {eval_negatives}, items={items}, positives_per_user={positives_per_user})"
        )
    if temperature <= 0:
        raise ValueError(f"data_options.temperature: must be > 0 (got {temperature})")
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((users, factors))
    v = rng.standard_normal((items, factors))
    bias = popularity * rng.standard_normal(items)
    affinity = (u @ v.T) / np.sqrt(factors) + bias
    logits = affinity / temperature
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)

    known = np.zeros((users, items), dtype=bool)
    train, val_cand, test_cand = [], [], []
    for i in range(users):
        chosen = rng.choice(items, size=positives_per_user, replace=False, p=probs[i])
        test_item, val_item, rest = chosen[0], chosen[1], chosen[2:]
        known[i, rest] = True
        train.extend((i, int(j)) for j in rest)
        never = np.setdiff1d(np.arange(items), chosen)
        val_cand.append([val_item, *rng.choice(never, size=eval_negatives, replace=False)])
        test_cand.append([test_item, *rng.choice(never, size=eval_negatives, replace=False)])
    return RankingData(
        train_pairs=torch.tensor(train, dtype=torch.int64),
        known=torch.from_numpy(known),
        val_candidates=torch.tensor(np.array(val_cand), dtype=torch.int64),
        test_candidates=torch.tensor(np.array(test_cand), dtype=torch.int64),
        num_users=users,
        num_items=items,
    )


def sample_negatives(users: torch.Tensor, known: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` uniformly drawn items per entry of ``users`` that are not among their training positives.

    Rejection sampling: redraw the hits until none is left (known positives are a small fraction of items).
    """
    num_items = known.shape[1]
    users = users.repeat_interleave(count)
    items = torch.randint(num_items, users.shape, generator=generator, device="cpu").to(users.device)
    for _ in range(1000):
        bad = known[users, items]
        if not bool(bad.any()):
            return items.view(-1, count)
        redraw = torch.randint(num_items, (int(bad.sum()),), generator=generator, device="cpu")
        items[bad] = redraw.to(items.device)
    raise RuntimeError("sample_negatives: could not find negatives (does some user know every item?)")


def ranking_metrics(scores: torch.Tensor) -> dict[str, float]:
    """AUC and HR@10 of candidate scores ``U × (1 + n)`` whose column 0 is the positive."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores: expected users × (1 + negatives) with >= 1 negative, got {tuple(scores.shape)}")
    pos, neg = scores[:, :1], scores[:, 1:]
    auc = ((neg < pos).double() + 0.5 * (neg == pos).double()).mean(dim=1).mean()
    at_or_above = (neg >= pos).sum(dim=1)
    hit = (at_or_above < 10).double().mean()
    return {"auc": float(auc), "hr@10": float(hit)}
