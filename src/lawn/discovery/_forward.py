"""Run a model once for inspection and leave no trace (shared by discovery and the homogeneity check).

A forward pass in ``train()`` mode updates BatchNorm running statistics and ``num_batches_tracked`` and draws
dropout masks from the global RNG. :func:`untouched` puts all of that back: buffers bit for bit (even ones the
forward replaced rather than updated in place; buffers it registered, such as a lazily built table, are
removed), ``requires_grad`` flags, and the CPU/CUDA RNG states. It
never calls ``train()``/``eval()``: the model runs in the mode it is in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lawn._checks import is_int

ExampleInputs = torch.Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]
#: which part of a model's output to analyse: a key / attribute name, a position, or a function of the output
OutputSelector = str | int | Callable[[Any], Any] | None


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
    """Every tensor in a (nested) tuple / list / dict / dataclass output, in order; a tensor is ``[output]``."""
    return [t for _, t in named_output_tensors(output)]


def named_output_tensors(output: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` for every tensor of the output (``"logits"``, ``"[0]"``, ``"hidden[1]"``), in order."""
    if isinstance(output, torch.Tensor):
        return [(prefix or "output", output)]
    if isinstance(output, Mapping):
        items = list(output.items())
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = [(f.name, getattr(output, f.name)) for f in dataclasses.fields(output)]
    elif isinstance(output, (tuple, list)):
        return [x for i, value in enumerate(output) for x in named_output_tensors(value, f"{prefix}[{i}]")]
    else:
        return []
    return [x for key, value in items for x in named_output_tensors(value, f"{prefix}.{key}" if prefix else str(key))]


def select_output(output: Any, selector: OutputSelector) -> Any:
    """The part of ``output`` to analyse: all of it (``None``), ``output[k]`` / ``output.k`` (a name),
    ``output[i]`` (a position), or ``selector(output)`` (a function)."""
    if selector is None:
        return output
    if callable(selector):
        return selector(output)
    if isinstance(selector, str):
        if isinstance(output, Mapping) and selector in output:
            return output[selector]
        if not isinstance(output, Mapping) and hasattr(output, selector):
            return getattr(output, selector)
    elif is_int(selector) and isinstance(output, (tuple, list)):
        if -len(output) <= selector < len(output):
            return output[selector]
    else:
        raise TypeError(f"output: expected a name, a position or a function, got {type(selector).__name__}")
    available = [name for name, _ in named_output_tensors(output)]
    raise ValueError(f"output={selector!r}: the model's output has no such part; its tensors are {available}")


def _cuda_devices(model: nn.Module) -> list[int]:
    tensors = [*model.parameters(), *model.buffers()]
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


@contextmanager
def untouched(model: nn.Module, *, track_all_parameters: bool = False) -> Iterator[None]:
    """Restore ``model``'s buffers, ``requires_grad`` flags and the RNG states on exit.

    With ``track_all_parameters`` every parameter requires grad inside the block, so that frozen ones show up
    in the autograd graph too (their activations are then saved as in training: only on request).
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modules = list(model.modules())
    buffers = [
        (module, name, buffer, None if buffer is None else buffer.detach().clone())
        for module in modules
        for name, buffer in module._buffers.items()
    ]
    registered = [(module, set(module._buffers)) for module in modules]
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        try:
            if track_all_parameters:
                for p, _ in flags:
                    p.requires_grad_(True)
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            for module, names in registered:
                for name in [n for n in module._buffers if n not in names]:  # registered by this forward
                    del module._buffers[name]
                    module._non_persistent_buffers_set.discard(name)
            with torch.no_grad():
                for module, name, buffer, saved in buffers:
                    module._buffers[name] = buffer
                    if buffer is not None:
                        buffer.copy_(saved)
