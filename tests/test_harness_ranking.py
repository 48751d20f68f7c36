"""The synthetic ranking task: metrics on hand-checkable scores, generation and negative sampling."""

from __future__ import annotations

import pytest
import torch

from lawn.harness.ranking import make_ranking_data, ranking_metrics, sample_negatives

OPTIONS = dict(users=30, items=60, factors=4, positives_per_user=8, eval_negatives=20, temperature=0.5, popularity=0.5)


def test_ranking_metrics_hand_checked() -> None:
    # user 0: positive beats all 3 negatives; user 1: beaten by 2 of 3; user 2: ties one, beats two
    scores = torch.tensor([[5.0, 1.0, 2.0, 3.0], [1.0, 2.0, 0.0, 3.0], [2.0, 2.0, 1.0, 0.0]])
    m = ranking_metrics(scores)
    assert m["auc"] == pytest.approx((1.0 + 1 / 3 + (0.5 + 2) / 3) / 3)
    assert m["hr@10"] == 1.0  # with 3 negatives everything is in the top 10


def test_hit_rate_counts_the_top_ten() -> None:
    negatives = torch.arange(20, dtype=torch.float32)  # scores 0..19
    rows = torch.stack(
        [
            torch.cat([torch.tensor([10.5]), negatives]),  # 9 negatives above → rank 10 → hit
            torch.cat([torch.tensor([9.5]), negatives]),  # 10 negatives above → miss
            torch.cat([torch.tensor([10.0]), negatives]),  # ties count against it: 10 at or above → miss
        ]
    )
    m = ranking_metrics(rows)
    assert m["hr@10"] == pytest.approx(1 / 3)
    assert m["auc"] == pytest.approx((11 / 20 + 10 / 20 + (10 + 0.5) / 20) / 3)  # negatives strictly below
    with pytest.raises(ValueError, match="scores"):
        ranking_metrics(torch.zeros(3, 1))


def test_generation_splits_leave_one_out_and_is_deterministic() -> None:
    data = make_ranking_data(seed=1, **OPTIONS)
    again = make_ranking_data(seed=1, **OPTIONS)
    assert torch.equal(data.train_pairs, again.train_pairs) and torch.equal(data.test_candidates, again.test_candidates)
    assert data.train_pairs.shape == (30 * 6, 2)
    assert data.val_candidates.shape == data.test_candidates.shape == (30, 21)
    for user in range(30):
        train_items = set(data.train_pairs[data.train_pairs[:, 0] == user, 1].tolist())
        val_pos, test_pos = int(data.val_candidates[user, 0]), int(data.test_candidates[user, 0])
        assert val_pos != test_pos and val_pos not in train_items and test_pos not in train_items
        positives = train_items | {val_pos, test_pos}
        assert not positives & set(data.val_candidates[user, 1:].tolist())
        assert not positives & set(data.test_candidates[user, 1:].tolist())
        assert set(torch.nonzero(data.known[user]).flatten().tolist()) == train_items


def test_planted_structure_is_learnable_by_the_true_affinity() -> None:
    # item popularity is planted: popular items (many training positives) should rank the test item well
    data = make_ranking_data(seed=0, **{**OPTIONS, "popularity": 3.0})
    popularity = torch.bincount(data.train_pairs[:, 1], minlength=60).float()
    assert ranking_metrics(popularity[data.test_candidates])["auc"] > 0.7


def test_sample_negatives_avoids_known_positives() -> None:
    data = make_ranking_data(seed=2, **OPTIONS)
    users = data.train_pairs[:, 0]
    negatives = sample_negatives(users, data.known, 3, torch.Generator().manual_seed(0))
    assert negatives.shape == (len(users), 3)
    assert not bool(data.known[users.repeat_interleave(3), negatives.reshape(-1)].any())


def test_bad_ranking_options_are_named() -> None:
    with pytest.raises(ValueError, match="eval_negatives"):
        make_ranking_data(seed=0, **{**OPTIONS, "eval_negatives": 55})
    with pytest.raises(ValueError, match="positives_per_user"):
        make_ranking_data(seed=0, **{**OPTIONS, "positives_per_user": 2})
