"""Run a model once for inspection and leave no trace (shared by discovery and the homogeneity check).

A forward pass in ``train()`` mode updates BatchNorm running statistics and ``num_batches_tracked`` and draws
dropout masks from the global RNG. :func:`untouched` puts all of that back: buffers bit for bit (even ones the
forward replaced rather than updated in place), ``requires_grad`` flags, and the CPU/CUDA RNG states. It
never calls ``train()``/``eval()``: the model runs in the mode it is in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

ExampleInputs = torch.Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]


def check_model(model: Any) -> nn.Module:
    """``model`` itself, or ``TypeError`` when it is not an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return model


def call(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """``model(x)`` for a tensor, ``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a mapping."""
    if isinstance(example_inputs, torch.Tensor):
        return model(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        try:
            return model(*example_inputs)
        except TypeError as err:
            if len(example_inputs) < 2 or "positional argument" not in str(err):
                raise
            raise TypeError(
                f"example_inputs: {type(model).__name__}.forward does not take {len(example_inputs)} positional "
                f"arguments ({err}). Pass the model's inputs only, not the labels: e.g. x, not (x, y)"
            ) from err
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    raise TypeError(
        "example_inputs: expected a tensor, a tuple of model arguments, or a dict of keyword arguments, "
        f"got {type(example_inputs).__name__}"
    )


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) tuple / list / dict output, in order; a tensor output is ``[output]``."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for value in output.values() for t in output_tensors(value)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in output_tensors(value)]
    return []


def _cuda_devices(model: nn.Module) -> list[int]:
    tensors = [*model.parameters(), *model.buffers()]
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


@contextmanager
def untouched(model: nn.Module, *, track_all_parameters: bool = False) -> Iterator[None]:
    """Restore ``model``'s buffers, ``requires_grad`` flags and the RNG states on exit.

    With ``track_all_parameters`` every parameter requires grad inside the block, so that frozen ones show up
    in the autograd graph too.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [
        (module, name, buffer, None if buffer is None else buffer.detach().clone())
        for module in model.modules()
        for name, buffer in module._buffers.items()
    ]
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        try:
            if track_all_parameters:
                for p, _ in flags:
                    p.requires_grad_(True)
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            with torch.no_grad():
                for module, name, buffer, saved in buffers:
                    module._buffers[name] = buffer
                    if buffer is not None:
                        buffer.copy_(saved)
