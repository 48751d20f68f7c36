"""Adam vs LAWN(Adam) on scikit-learn's digits with a tiny BN network; prints both test accuracies.

python examples/digits_adam_vs_lawn.py [--epochs 30] [--batch-size 512] [--seeds 3]
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import lawn


def digits(seed: int) -> tuple[torch.Tensor, ...]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1200], order[1200:]
    return x[train], y[train], x[test], y[test]


def model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def train(use_lawn: bool, seed: int, epochs: int, batch_size: int, lr: float) -> float:
    x, y, x_test, y_test = digits(seed)
    torch.manual_seed(seed)
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = -(-len(y) // batch_size)
    if use_lawn:  # the final homogeneous sub-network, found by discovery: the two Linear layers after the BatchNorm
        tail = lawn.final_homogeneous_params(net, x[:8])
        opt = lawn.LAWN(opt, tail, free_steps=steps_per_epoch * epochs // 4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return (net(x_test).argmax(1) == y_test).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for name, use_lawn in (("Adam", False), ("LAWN(Adam)", True)):
        accs = [train(use_lawn, s, args.epochs, args.batch_size, args.lr) for s in range(args.seeds)]
        mean = sum(accs) / len(accs)
        print(f"{name:11s} test accuracy {mean:.4f}  (seeds: {', '.join(f'{a:.4f}' for a in accs)})")


if __name__ == "__main__":
    main()
