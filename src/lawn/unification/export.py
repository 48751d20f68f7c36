"""A compact file for a hardened model, and loading it back bit-identically.

Per hardened weight the file stores its block size, the block kinds (2 bits a block), the dense entries as they
are (their dtype), one magnitude per unified block and one sign bit per unified entry; nothing per pruned block.
Every other entry of the model's ``state_dict`` (biases, norm layers, unhardened weights, buffers) is stored as it
is. The file is ``torch.save`` of plain dicts, strings, ints and tensors and is read back with
``torch.load(weights_only=True)``, which cannot run code.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from lawn._checks import is_int
from lawn.unification.blocks import DENSE, UNIFIED
from lawn.unification.parametrization import hardened_layers, install

FORMAT, VERSION = "lawn.unification", 2  # version 1: one block size for the whole file (still read)
_FIELDS = {"shape", "kinds", "dense", "magnitudes", "signs"}


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative ints ``< 2**bits`` (bits in 1, 2, 4, 8) into uint8, ``8 // bits`` values a byte."""
    per_byte = 8 // bits
    flat = values.reshape(-1).to(torch.uint8).cpu()
    pad = (-flat.numel()) % per_byte
    flat = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.uint8) * bits
    return (flat << shifts).sum(1, dtype=torch.uint8) if flat.numel() else flat.new_zeros(0)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``count`` values (int64)."""
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.uint8) * bits
    values = (packed.reshape(-1, 1) >> shifts) & ((1 << bits) - 1)
    return values.reshape(-1)[:count].long()


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without the hardened weights' parametrization entries."""
    owned = tuple(
        f"{name}.parametrizations.weight." if name else "parametrizations.weight."
        for name, _, _ in hardened_layers(model)
    )
    return {k: v for k, v in model.state_dict().items() if not k.startswith(owned)} if owned else model.state_dict()


def export(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the compact file of a hardened ``model`` (see the module docstring)."""
    layers: dict[str, Any] = {}
    for name, module, param in hardened_layers(model):
        plist = module.parametrizations.weight
        if len(plist) != 1:
            raise ValueError(
                f"model: {name}.weight has other parametrizations stacked with the unification one; "
                "export only supports the unification parametrization alone"
            )
        layers[name] = {
            "size": param.size,
            "shape": list(param.shape),
            "kinds": pack_bits(param.kinds, 2),
            "dense": plist.original0.detach().cpu().clone(),
            "magnitudes": plist.original1.detach().cpu().clone(),
            "signs": pack_bits(param.signs.reshape(-1) < 0, 1),
        }
    if not layers:
        raise ValueError("model: nothing hardened to export; call ADMM.harden() or lawn.unification.harden() first")
    state = {k: v.detach().cpu().clone() for k, v in _plain_state(model).items()}
    _save_whole({"format": FORMAT, "version": VERSION, "layers": layers, "state": state}, os.fspath(path))


def _save_whole(blob: dict[str, Any], path: str) -> None:
    """``torch.save`` into a new file beside ``path``, then renamed over it: a save that fails midway (a full disk,
    Ctrl-C) leaves no partial file, and an earlier export at ``path`` as it was."""
    partial = f"{path}.{uuid.uuid4().hex[:8]}.partial"
    try:
        with open(partial, "xb") as handle:
            torch.save(blob, handle)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _bad(path: str, what: str) -> ValueError:
    return ValueError(f"{path}: not a valid {FORMAT} export ({what}); write it again with lawn.unification.export")


def _read(path: str) -> dict[str, Any]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # a truncated zip, random bytes, a pickle with objects: all refused the same way
        raise _bad(path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise _bad(path, "no format header")
    if blob.get("version") not in (1, VERSION):
        raise _bad(path, f"version {blob.get('version')!r}, this lawn reads versions 1 and {VERSION}")
    if not isinstance(blob.get("layers"), dict) or not isinstance(blob.get("state"), dict):
        raise _bad(path, "missing layers or state")
    return blob


def _block_size(path: str, what: str, size: Any) -> int:
    if not is_int(size) or size < 1:
        raise _bad(path, f"{what}block size {size!r}")
    return size


def _decode_layer(path: str, name: str, entry: Any, version: int, size: int | None, weight: torch.Tensor) -> tuple:
    fields = _FIELDS if version == 1 else _FIELDS | {"size"}
    if not isinstance(entry, dict) or set(entry) != fields:
        raise _bad(path, f"layer {name!r} has the wrong fields")
    if version != 1:
        size = _block_size(path, f"layer {name!r}: ", entry["size"])
    assert size is not None
    shape = tuple(entry["shape"])
    if shape != tuple(weight.shape):
        raise ValueError(
            f"{path}: layer {name!r} has shape {shape} in the file but {tuple(weight.shape)} in the "
            "model; load into a model of the same architecture"
        )
    if not all(isinstance(entry[k], torch.Tensor) for k in ("kinds", "dense", "magnitudes", "signs")):
        raise _bad(path, f"layer {name!r} holds non-tensors")
    if len(shape) < 2 or shape[1] % size:
        raise _bad(path, f"layer {name!r}: block size {size} does not divide its input dim {shape[1:2]}")
    num_blocks = math.prod(shape) // size
    if entry["kinds"].dtype != torch.uint8 or entry["kinds"].numel() != math.ceil(num_blocks / 4):
        raise _bad(path, f"layer {name!r}: kinds take {entry['kinds'].numel()} bytes, expected {-(-num_blocks // 4)}")
    grid_shape = (shape[0], shape[1] // size, *shape[2:])
    kinds = unpack_bits(entry["kinds"], 2, num_blocks).reshape(grid_shape)
    if int(kinds.max()) > 2:
        raise _bad(path, f"layer {name!r}: unknown block kind {int(kinds.max())}")
    n_dense, n_unified = int((kinds == DENSE).sum()), int((kinds == UNIFIED).sum())
    dense, magnitudes, signs = entry["dense"], entry["magnitudes"], entry["signs"]
    if dense.dim() != 1 or dense.numel() != n_dense * size or not dense.is_floating_point():
        raise _bad(path, f"layer {name!r}: {dense.numel()} dense values for {n_dense} dense blocks of {size}")
    if magnitudes.dim() != 1 or magnitudes.numel() != n_unified or magnitudes.dtype != dense.dtype:
        raise _bad(path, f"layer {name!r}: {magnitudes.numel()} magnitudes for {n_unified} unified blocks")
    if signs.dtype != torch.uint8 or signs.numel() != math.ceil(n_unified * size / 8):
        raise _bad(path, f"layer {name!r}: {signs.numel()} sign bytes for {n_unified} unified blocks of {size}")
    sign_values = 1.0 - 2.0 * unpack_bits(signs, 1, n_unified * size).to(dense.dtype)
    return kinds, dense, magnitudes, sign_values.reshape(n_unified, size), size


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load an ``export`` file into ``model`` (same architecture, hardened or not) and return it.

    The hardened weights get the same parametrization and stored tensors, so outputs are bit-identical to the
    exported model's. Every check runs before anything is written: on error the model is unchanged.
    """
    path = os.fspath(path)
    blob = _read(path)
    version = blob["version"]
    size = _block_size(path, "", blob.get("block_size")) if version == 1 else None
    modules = dict(model.named_modules())
    decoded = {}
    for name, entry in blob["layers"].items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise ValueError(
                f"{path}: layer {name!r} is not a module with a weight in the model; load into a model "
                "of the same architecture"
            )
        decoded[name] = _decode_layer(path, name, entry, version, size, module.weight)
    # the model's plain state, with every hardened weight (in the file or already in the model) as "<name>.weight"
    expected = dict(_plain_state(model))
    for name, _, _ in hardened_layers(model):
        expected[f"{name}.weight" if name else "weight"] = modules[name].weight
    for name in decoded:
        expected.pop(f"{name}.weight" if name else "weight", None)
    state = blob["state"]
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(
            f"{path}: state does not match the model (missing {missing[:5]}, unexpected {extra[:5]}); "
            "load into a model of the same architecture"
        )
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            raise ValueError(
                f"{path}: {key!r} has shape {getattr(value, 'shape', None)} in the file but "
                f"{tuple(expected[key].shape)} in the model"
            )
    # all checks passed: write
    with torch.no_grad():
        for name, module, _ in list(hardened_layers(model)):
            if name not in decoded:  # hardened here, dense in the file: back to a plain weight, loaded below
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        for name, (kinds, dense, magnitudes, signs, layer_size) in decoded.items():
            module = modules[name]
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            install(module, kinds, signs, layer_size)
            plist = module.parametrizations.weight
            plist.original0.copy_(dense)
            plist.original1.copy_(magnitudes)
        missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    return model
