"""A zoo of small models for the discovery tests, each with the exact tail discovery must find.

Every entry builds a fresh model and example inputs (seeded, CPU, tiny) and states, in forward order, the
weights of its final homogeneous sub-network and the degree ``k`` of ``f(αW) = α^k f(W)`` once the tail's
biases are zero (``None`` where paths of different depth make the tail of mixed degree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], tuple[nn.Module, Any]]  # → (model, example_inputs)
    tail: list[str]
    degree: int | None


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class BNResNet(nn.Module):
    """Stem, two residual blocks (one downsampling), global average pool via ``mean``, linear head."""

    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean(dim=(2, 3)))


class VGG(nn.Module):
    """Conv-BN-ReLU features, then a three-layer classifier with dropout."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(16 * 2 * 2, 32), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(32, classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class TransformerClassifier(nn.Module):
    """Token + position embeddings, a 2-layer post-norm encoder, a final LayerNorm, mean pooling, a head."""

    def __init__(self, vocab: int = 50, d: int = 16, length: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Parameter(0.02 * torch.randn(1, length, d))
        layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tokens(ids) + self.positions[:, : ids.shape[1]]
        return self.head(self.norm(self.encoder(h)).mean(dim=1))


def relu_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


class GeluAfterNorm(nn.Module):
    """stem → LayerNorm → hidden → GELU → out: only ``out`` follows the last non-homogeneous op."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(16, 3)  # registered first: discovery reports forward order, not this order
        self.stem = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.hidden = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.hidden(self.norm(self.stem(x)))))


class TwoTower(nn.Module):
    """Recommender: user and item embeddings → concat → BatchNorm → MLP → one score."""

    def __init__(self, users: int = 20, items: int = 30, d: int = 8) -> None:
        super().__init__()
        self.user = nn.Embedding(users, d)
        self.item = nn.Embedding(items, d)
        self.bn = nn.BatchNorm1d(2 * d)
        self.mlp = nn.Sequential(nn.Linear(2 * d, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.bn(torch.cat([self.user(users), self.item(items)], dim=1))).squeeze(1)


class FunctionalNet(nn.Module):
    """Raw parameters and functional ops only: conv2d, relu, max_pool2d, flatten, linear, ``@``."""

    def __init__(self) -> None:
        super().__init__()
        self.w2 = nn.Parameter(0.1 * torch.randn(10, 32))  # registered before w1 on purpose
        self.conv_w = nn.Parameter(0.1 * torch.randn(8, 3, 3, 3))
        self.w1 = nn.Parameter(0.1 * torch.randn(32, 8 * 3 * 3))
        self.b1 = nn.Parameter(torch.zeros(32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(F.conv2d(x, self.conv_w)), 2)
        h = F.relu(F.linear(torch.flatten(h, 1), self.w1, self.b1))
        return h @ self.w2.t()


class TiedLM(nn.Module):
    """Embedding tied to the output head; the embedding also feeds a LayerNorm, so it is excluded."""

    def __init__(self, vocab: int = 30, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(F.relu(self.fc(self.norm(self.embed(ids)))))}


class SharedTail(nn.Module):
    """One layer applied twice after the norm: its weight is in the tail once, with degree 2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm(self.stem(x)))
        return self.out(F.relu(self.fc(F.relu(self.fc(h)))))


class MixedPaths(nn.Module):
    """``stem`` feeds a homogeneous branch and a LayerNorm branch: it is excluded, both heads are in."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)
        self.side = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(F.relu(h)) + self.side(self.norm(h))


class Attention(nn.Module):
    """LayerNorm → single-head self-attention (explicit softmax, or SDPA) → output projection → head.

    Attention is linear in ``v`` but not in ``q``/``k`` (softmax), so ``v``, ``o`` and ``head`` are the tail.
    """

    def __init__(self, d: int = 8, sdpa: bool = False) -> None:
        super().__init__()
        self.sdpa = sdpa
        self.norm = nn.LayerNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.head = nn.Linear(d, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        if self.sdpa:
            # 4-D (batch, heads, length, dim) so that CPU runs the fused kernel, not the decomposed math path
            a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        else:
            a = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v
        return self.head(self.o(a).mean(dim=1))


class SigmoidOutput(nn.Module):
    """Returns probabilities: no weight is homogeneous (the error case)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = relu_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(x))


class DataDependent(nn.Module):
    """Branches on the input's values and loops a data-dependent number of times (``fx`` cannot trace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.block = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        if x.mean() > 0:  # data-dependent branch: normalize only positive-mean batches
            h = self.norm(h)
        for _ in range(1 + int(x.abs().max() > 1)):  # data-dependent loop length
            h = F.relu(self.block(h))
        return self.out(h)


def _seeded(build: Callable[[], tuple[nn.Module, Any]]) -> Callable[[], tuple[nn.Module, Any]]:
    def seeded_build() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        return build()

    return seeded_build


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8)


ZOO = [
    ZooEntry("bn_resnet", _seeded(lambda: (BNResNet(), _images())), ["fc.weight"], 1),
    ZooEntry(
        "vgg",
        _seeded(lambda: (VGG(), _images())),
        ["classifier.0.weight", "classifier.3.weight", "classifier.6.weight"],
        3,
    ),
    ZooEntry(
        "transformer",
        _seeded(lambda: (TransformerClassifier(), torch.randint(0, 50, (3, 8)))),
        ["head.weight"],
        1,
    ),
    ZooEntry("relu_mlp", _seeded(lambda: (relu_mlp(), torch.randn(5, 6))), ["0.weight", "2.weight", "4.weight"], 3),
    ZooEntry("gelu_after_norm", _seeded(lambda: (GeluAfterNorm(), torch.randn(5, 6))), ["out.weight"], 1),
    ZooEntry(
        "two_tower",
        _seeded(lambda: (TwoTower(), (torch.randint(0, 20, (6,)), torch.randint(0, 30, (6,))))),
        ["mlp.0.weight", "mlp.2.weight"],
        2,
    ),
    ZooEntry("functional", _seeded(lambda: (FunctionalNet(), _images())), ["conv_w", "w1", "w2"], 3),
    ZooEntry("tied_lm", _seeded(lambda: (TiedLM(), torch.randint(0, 30, (2, 5)))), ["fc.weight"], 1),
    ZooEntry("shared_tail", _seeded(lambda: (SharedTail(), torch.randn(5, 6))), ["fc.weight", "out.weight"], 3),
    ZooEntry("mixed_paths", _seeded(lambda: (MixedPaths(), torch.randn(5, 6))), ["head.weight", "side.weight"], 1),
    ZooEntry(
        "attention",
        _seeded(lambda: (Attention(), torch.randn(2, 5, 8))),
        ["v.weight", "o.weight", "head.weight"],
        3,
    ),
    ZooEntry(
        "attention_sdpa",
        _seeded(lambda: (Attention(sdpa=True), torch.randn(2, 5, 8))),
        ["v.weight", "o.weight", "head.weight"],
        3,
    ),
]
