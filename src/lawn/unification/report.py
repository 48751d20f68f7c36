"""Storage and multiplication counts of a hardened model (counts, not wall-clock time).

Storage per hardened weight: dense entries at their dtype's bits, ``bits + n`` per unified block (one magnitude and
``n`` sign bits), nothing per pruned block, plus the block-kind map at 2 bits a block; against ``32·numel`` for a
dense fp32 weight. Multiplications per output position: one per dense entry and one per unified block (the block's
``n`` signed inputs are added first, then multiplied once by its magnitude), none for a pruned block; additions
are unchanged. No kernel exploiting this was built, so nothing here is a measured speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lawn.unification.blocks import DENSE, PRUNED, UNIFIED
from lawn.unification.parametrization import hardened_layers
from lawn.unification.selection import SCANNED

KIND_MAP_BITS = 2


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, ...]
    blocks: int
    dense: int
    unified: int
    pruned: int
    bits: int  # compact storage of this weight, kind map included
    dense_fp32_bits: int  # 32 · numel
    multiplies: int  # per sample when positions are known (example_input), else per output position
    dense_multiplies: int


@dataclass
class CompressionReport:
    layers: list[LayerReport]
    other_bits: int  # every parameter that is not a hardened weight, at its dtype's bits
    other_multiplies: int  # unhardened Linear/Conv layers (0 without example_input)
    per_sample: bool  # multiplies counted per input sample (example_input given) or per output position
    other_bits_fp32: int  # the same parameters at 32 bits
    notes: list[str] = field(default_factory=list)

    @property
    def bits(self) -> int:
        return sum(layer.bits for layer in self.layers) + self.other_bits

    @property
    def dense_fp32_bits(self) -> int:
        return sum(layer.dense_fp32_bits for layer in self.layers) + self.other_bits_fp32

    @property
    def multiplies(self) -> int:
        return sum(layer.multiplies for layer in self.layers) + self.other_multiplies

    @property
    def dense_multiplies(self) -> int:
        return sum(layer.dense_multiplies for layer in self.layers) + self.other_multiplies

    def __str__(self) -> str:
        unit = "per sample" if self.per_sample else "per output position"
        rows = [
            f"| layer | shape | dense / unified / pruned blocks | bits (vs fp32) | multiplies {unit} (vs dense) |",
            "|---|---|---|---|---|",
        ]
        for r in self.layers:
            rows.append(
                f"| {r.name} | {tuple(r.shape)} | {r.dense} / {r.unified} / {r.pruned} | "
                f"{r.bits:,} ({r.bits / r.dense_fp32_bits:.3f}) | "
                f"{r.multiplies:,} ({r.multiplies / max(r.dense_multiplies, 1):.3f}) |"
            )
        rows.append(f"| other parameters | | | {self.other_bits:,} | {self.other_multiplies:,} |")
        rows.append(
            f"| total | | | {self.bits:,} ({self.bits / self.dense_fp32_bits:.3f}) | "
            f"{self.multiplies:,} ({self.multiplies / max(self.dense_multiplies, 1):.3f}) |"
        )
        return "\n".join(rows + [f"Note: {n}" for n in self.notes])


def _positions(model: nn.Module, example_input: torch.Tensor | tuple) -> dict[nn.Module, int]:
    """Output positions per sample of every Linear/Conv module, from one no-grad forward."""
    seen: dict[nn.Module, int] = {}

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        channels = output.shape[1] if not isinstance(module, nn.Linear) else output.shape[-1]
        seen[module] = output.numel() // (output.shape[0] * channels)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SCANNED)]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for m, mode in modes:  # each module's own mode: a BatchNorm frozen in eval stays in eval
            m.training = mode
        for h in handles:
            h.remove()
    return seen


def compression_report(model: nn.Module, example_input: torch.Tensor | tuple | None = None) -> CompressionReport:
    """Per hardened layer and in total: storage bits vs dense fp32 and multiplications vs dense.

    With ``example_input`` (a batch; one no-grad forward in eval mode) multiplies are per sample and include the
    unhardened Linear/Conv layers; without it they are per output position of the hardened layers only.
    """
    positions = _positions(model, example_input) if example_input is not None else {}
    layers, hardened_ids = [], set()
    for name, module, param in hardened_layers(model):
        plist = module.parametrizations.weight
        hardened_ids.update({id(plist.original0), id(plist.original1)})
        kinds = param.kinds
        n_dense, n_unified, n_pruned = (int((kinds == k).sum()) for k in (DENSE, UNIFIED, PRUNED))
        dtype_bits = torch.finfo(plist.original0.dtype).bits
        numel = kinds.numel() * param.size
        per_position = n_dense * param.size + n_unified
        scale = positions.get(module, 1)
        layers.append(
            LayerReport(
                name=name,
                shape=param.shape,
                blocks=kinds.numel(),
                dense=n_dense,
                unified=n_unified,
                pruned=n_pruned,
                bits=n_dense * param.size * dtype_bits
                + n_unified * (dtype_bits + param.size)
                + KIND_MAP_BITS * kinds.numel(),
                dense_fp32_bits=32 * numel,
                multiplies=per_position * scale,
                dense_multiplies=numel * scale,
            )
        )
    if not layers:
        raise ValueError("model: no hardened weights to report; call ADMM.harden() or lawn.unification.harden()")
    other = [p for p in model.parameters() if id(p) not in hardened_ids]
    other_bits = sum(p.numel() * (torch.finfo(p.dtype).bits if p.is_floating_point() else 32) for p in other)
    other_mults = sum(
        m.weight.numel() * positions[m] for m in positions if not any(m is mod for _, mod, _ in hardened_layers(model))
    )
    notes = ["multiplications are counts, not wall-clock time: no kernel exploiting unified blocks was built"]
    if example_input is None:
        notes.append("no example_input: multiplies are per output position of the hardened layers only")
    other_fp32 = sum(p.numel() * 32 for p in other)
    return CompressionReport(layers, other_bits, other_mults, example_input is not None, other_fp32, notes)
