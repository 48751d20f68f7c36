"""Small batch-normalised models, written here (torchvision is not used).

Each ends in a *final homogeneous sub-network*: the layers after the last normalisation up to the logits
(ReLU, pooling, bias-free-in-spirit Linear layers), whose weights LAWN constrains.

- ``mlp``: flatten → [Linear → BN → ReLU] × 2 → Linear.
- ``resnet``: a 3-stage BN ResNet (basic blocks, widths w, 2w, 4w) → global average pool → Linear. It
  gives its residual structure to the scale-shift-invariant penalty (:meth:`ResNet.ssi_layers`).
- ``vgg``: [conv-BN-ReLU ×2, max-pool] × 2 → adaptive average pool 2×2 → Linear → ReLU → Linear (no BN in
  the classifier, so its final homogeneous part has two Linear layers).
- ``vgg_nonorm``: the ``vgg`` layout without any normalization (conv-ReLU ×2, max-pool) × 2 → adaptive average
  pool 2×2 → Linear → ReLU → Linear, no biases: the whole network is homogeneous, so its final homogeneous
  sub-network is every layer (six weights).
- ``cnn1d``: three conv1d-BN-ReLU layers (stride 2) on a length-L signal → flatten → Linear.
- ``cnn1d_nonorm``: ``cnn1d`` without BatchNorm and without biases (He init): the whole network is homogeneous,
  so its final homogeneous sub-network is every layer (four weights).
- ``lenet300``: LeNet-300-100 (flatten → Linear 300 → ReLU → Linear 100 → ReLU → Linear), no normalization:
  the lottery-ticket literature's sanity-check network.
- ``lenet5``: a LeNet-5-size conv net without normalization (conv 5×5 → 8 → ReLU → max-pool, conv 5×5 → 16 →
  ReLU → max-pool, Linear 120 → ReLU → Linear 84 → ReLU → Linear); 8 channels instead of LeNet-5's 6, so that
  blocks of 4 input channels tile every layer but the first (weight unification).
- ``ncf``: NCF-style MLP for (user, item) pairs: concat(embeddings) → [Linear → BN → ReLU] × 2 → Linear(1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

import lawn


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        features = 1
        for d in input_shape:
            features *= d
        hidden = 8 * width
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class LeNet300(nn.Sequential):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        features = 1
        for d in input_shape:
            features *= d
        super().__init__(
            nn.Flatten(),
            nn.Linear(features, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )


class LeNet5(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        _need_image(input_shape, "lenet5")
        channels, height, breadth = input_shape

        def side(n: int) -> int:  # two valid 5×5 convs, each followed by a 2×2 max-pool
            return ((n - 4) // 2 - 4) // 2

        if side(height) < 1 or side(breadth) < 1:
            raise ValueError(f"model 'lenet5': images of {height}×{breadth} are too small; it needs at least 16×16")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * side(height) * side(breadth), 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        _need_image(input_shape, "resnet")
        w = width
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(w, w, 1), BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 4 * w, 2))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))

    def ssi_layers(self) -> list[nn.Module | lawn.ResidualBranch]:
        """Structure for ``lawn.scale_shift_invariant_penalty``: stem conv, one
        ``ResidualBranch([conv1, conv2])`` per block (factor ``1 + ‖W₁‖‖W₂‖``), fc.

        A downsampling block's 1×1 shortcut conv is left out and its shortcut counts as the branch's
        ``1``: that conv feeds a BatchNorm, so its scale is invisible to the function and its norm is no
        factor of the product (the library's ``ResidualBranch`` has no slot for a weighted shortcut either).
        Read as a plain chain instead, the shortcut convs would multiply in as extra layers.
        """
        blocks = [lawn.ResidualBranch([block.conv1, block.conv2]) for block in self.stages]
        return [self.stem[0], *blocks, self.fc]


class VGG(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        _need_image(input_shape, "vgg")
        w = width

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *conv(input_shape[0], w),
            *conv(w, w),
            nn.MaxPool2d(2),
            *conv(w, 2 * w),
            *conv(2 * w, 2 * w),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(8 * w, 8 * w), nn.ReLU(), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGNoNorm(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        _need_image(input_shape, "vgg_nonorm")
        w = width

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.ReLU()]

        self.features = nn.Sequential(
            *conv(input_shape[0], w),
            *conv(w, w),
            nn.MaxPool2d(2),
            *conv(w, 2 * w),
            *conv(2 * w, 2 * w),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(8 * w, 8 * w, bias=False), nn.ReLU(), nn.Linear(8 * w, num_classes, bias=False)
        )
        for m in self.modules():  # He init keeps the signal's scale through the ReLU stack (no norm to do it)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CNN1D(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int, normalization: bool = True) -> None:
        super().__init__()
        name = "cnn1d" if normalization else "cnn1d_nonorm"
        if len(input_shape) != 1:
            raise ValueError(f"model {name!r}: expects 1-D signals, got input shape {input_shape}")
        length = input_shape[0]
        layers: list[nn.Module] = []
        cin = 1
        for _ in range(3):
            layers.append(nn.Conv1d(cin, width, 5, 2, 2, bias=False))
            layers += [nn.BatchNorm1d(width), nn.ReLU()] if normalization else [nn.ReLU()]
            cin = width
            length = (length + 1) // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(width * length, num_classes, bias=normalization)
        if not normalization:  # He init keeps the signal's scale through the ReLU stack (no norm to do it)
            for m in self.modules():
                if isinstance(m, (nn.Conv1d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x.unsqueeze(1)))


class NCF(nn.Module):
    """Scores (user, item) index pairs ``N × 2``; returns one logit per pair (shape ``N``)."""

    def __init__(self, num_users: int, num_items: int, width: int) -> None:
        super().__init__()
        self.user = nn.Embedding(num_users, width)
        self.item = nn.Embedding(num_items, width)
        self.body = nn.Sequential(
            nn.Linear(2 * width, 2 * width),
            nn.BatchNorm1d(2 * width),
            nn.ReLU(),
            nn.Linear(2 * width, width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.head = nn.Linear(width, 1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.user(pairs[:, 0]), self.item(pairs[:, 1])], dim=1)
        return self.head(self.body(h)).squeeze(1)


def _need_image(input_shape: tuple[int, ...], name: str) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r}: expects C×H×W images, got input shape {input_shape}")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # the task it serves: "classification" or "ranking"
    build: Callable[..., nn.Module]
    input_dims: int | None  # dims of one example (3 for images, 1 for signals), None = any
    batchnorm: bool = True  # has BatchNorm layers (then a batch needs >= 2 examples in training)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("mlp", "classification", MLP, None),
        ModelSpec("resnet", "classification", ResNet, 3),
        ModelSpec("vgg", "classification", VGG, 3),
        ModelSpec("vgg_nonorm", "classification", VGGNoNorm, 3),
        ModelSpec("cnn1d", "classification", CNN1D, 1),
        ModelSpec("cnn1d_nonorm", "classification", partial(CNN1D, normalization=False), 1, batchnorm=False),
        ModelSpec("ncf", "ranking", NCF, None),
        ModelSpec("lenet300", "classification", LeNet300, None),
        ModelSpec("lenet5", "classification", LeNet5, 3, batchnorm=False),
    ]
}
_IMAGE_SETS = {"fashion_mnist", "mnist", "cifar10", "digits"}


def check_compatible(model: str, dataset: str) -> None:
    """Raise ``ValueError`` if ``model`` cannot read ``dataset`` (e.g. a 1-D CNN on images)."""
    from lawn.harness.datasets import DATASETS

    spec, task = MODELS[model], DATASETS[dataset].task
    if spec.task != task:
        raise ValueError(f"model: {model!r} is for {spec.task}, dataset {dataset!r} is a {task} task")
    dims = 3 if dataset in _IMAGE_SETS else 1
    if spec.input_dims is not None and spec.input_dims != dims:
        raise ValueError(f"model: {model!r} cannot read dataset {dataset!r} (its examples have {dims} dim(s))")


def build_model(name: str, data: object, width: int) -> nn.Module:
    """The model ``name`` sized for ``data`` (a ClassificationData or RankingData)."""
    spec = MODELS[name]
    if spec.task == "ranking":
        return spec.build(data.num_users, data.num_items, width)  # type: ignore[attr-defined]
    return spec.build(data.input_shape, data.num_classes, width)  # type: ignore[attr-defined]
