"""Small models, data and optimizer factories shared by the LAWN tests."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import pytest
import pytorch_optimizer
import torch
from torch import nn

import lawn

# Every torch optimizer the core issue names, in its plain / foreach / fused flavours, and LAMB.
OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd_plain": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam_fused": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
    "adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, foreach=True),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=1e-2),
    "nadam": lambda ps: torch.optim.NAdam(ps, lr=1e-2),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.05),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3),
    "lamb": lambda ps: pytorch_optimizer.Lamb(ps, lr=1e-2),
}


class BNNet(nn.Module):
    """Linear → BN → ReLU → Linear → ReLU → Linear: the last two Linear layers are the homogeneous tail."""

    def __init__(self, d_in: int = 8, width: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.bn = nn.BatchNorm1d(width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        return self.head(torch.relu(self.hidden(h)))

    def tail(self) -> list[tuple[str, torch.Tensor]]:
        return [("hidden.weight", self.hidden.weight), ("head.weight", self.head.weight)]


def clusters(n: int = 256, d_in: int = 8, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters: an easy, learnable classification set."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d_in, generator=gen) * 2.0
    y = torch.randint(0, classes, (n,), generator=gen)
    return centres[y] + torch.randn(n, d_in, generator=gen), y


def batches(steps: int, batch: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = clusters(seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        out.append((x[idx], y[idx]))
    return out


def train_step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    return loss.detach()


def roundtrip(obj: object) -> object:
    """``torch.save`` then ``torch.load(weights_only=True)``: what a real checkpoint goes through."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Deep copy of model parameters/buffers and optimizer state, for "nothing was modified" checks."""
    return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": roundtrip(opt.state_dict())}


def assert_same_tree(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tree(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tree(x, y)
    else:
        assert a == b


def assert_falls_back_once(fast: tuple, plain: tuple, match: str, steps: int = 6) -> None:
    """``fast = (model, opt)`` warns (a ``RuntimeWarning`` matching ``match``) in its first steps and never
    again, and trains its model like ``plain = (model, opt)`` trains its own."""
    data = batches(steps)
    with pytest.warns(RuntimeWarning, match=match) as caught:
        for xb, yb in data[: steps // 2]:
            train_step(*fast, xb, yb)
    lawn_dir = Path(lawn.__file__).resolve().parent
    (warned,) = [w for w in caught if w.category is RuntimeWarning and re.search(match, str(w.message))]
    assert not Path(warned.filename).resolve().is_relative_to(lawn_dir), "the warning must point at the caller"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: not again
        for xb, yb in data[steps // 2 :]:
            train_step(*fast, xb, yb)
    for xb, yb in data:
        train_step(*plain, xb, yb)
    for a, b in zip(fast[0].parameters(), plain[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
