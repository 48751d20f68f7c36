"""Which layers does LAWN constrain in a BatchNorm ResNet? Print lawn.explain's table, check it numerically.

Run: ``PYTHONPATH=src python examples/explain_resnet.py`` (CPU, a second). It produced the table in
README.md ("Which layers does LAWN constrain?").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import lawn


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


class ResNet8(nn.Module):
    """CIFAR-style ResNet: a stem and three stages of one block each, global average pool, linear head."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def main() -> None:
    torch.manual_seed(0)
    model, x = ResNet8(), torch.randn(8, 3, 32, 32)
    print(lawn.explain(model, x))
    tail = lawn.final_homogeneous_params(model, x)
    print("\nfinal_homogeneous_params:", [name for name, _ in tail])
    print("check_homogeneity, fc.bias as initialized:", lawn.check_homogeneity(model, tail, x))
    with torch.no_grad():
        model.fc.bias.zero_()
    print("check_homogeneity, fc.bias = 0:           ", lawn.check_homogeneity(model, tail, x))


if __name__ == "__main__":
    main()
