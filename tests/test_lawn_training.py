"""Training sanity: LAWN(Adam) fits a small BN network as well as Adam does."""

import torch

import lawn
from lawn_helpers import BNNet, clusters


def fit(use_lawn: bool, steps: int = 150) -> float:
    torch.manual_seed(0)
    x, y = clusters(n=512, seed=7)
    model = BNNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if use_lawn:
        opt = lawn.LAWN(opt, model.tail(), free_steps=50)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_lawn_adam_reaches_the_training_accuracy_of_adam():
    plain, with_lawn = fit(False), fit(True)
    assert plain > 0.9, "the task must be learnable for the comparison to mean anything"
    assert with_lawn >= plain - 0.02, (plain, with_lawn)
