"""The comparison arms of a lottery-ticket study, each a small function on a (masked) model.

- ``rewind(model, initial_state, masks)``: the *winning ticket*: every parameter and buffer back to
  ``initial_state`` (θ₀, or θ_k saved after ``k`` steps for *late rewinding*), then the masks. The surviving
  weights equal their initial values; the pruned ones are zero.
- ``reinitialize(model, masks, seed)``: *random re-initialization*: the same masks on a fresh draw from the
  model's own init scheme (each module's ``reset_parameters``, or a ``factory`` that builds the model).
- ``prune_and_finetune(model, masks, train, lr_schedule)``: keep the trained surviving weights, mask, and train
  on with ``lr_schedule`` (your training function receives the model and the schedule).

Each arm checks its inputs before it changes anything, and replaces (does not compound) the model's masks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from lawn._checks import is_int
from lawn.pruning._names import dense_state
from lawn.pruning.apply import apply_masks, check_masks, current_masks, remove_masks


def _masks_or_current(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    if masks is None:
        masks = {k: v.clone() for k, v in current_masks(model).items()}
        return masks
    return {k: v.clone() for k, v in check_masks(model, masks).items()}


def check_state(model: nn.Module, state: Mapping[str, torch.Tensor] | nn.Module, what: str) -> dict[str, torch.Tensor]:
    """``state`` in unpruned names, checked to have exactly ``model``'s keys and shapes."""
    given, own = dense_state(state), dense_state(model)
    missing = [k for k in own if k not in given]
    extra = [k for k in given if k not in own]
    if missing or extra:
        raise ValueError(
            f"{what}: not a state of this architecture (missing {missing[:4]}, unexpected {extra[:4]}); "
            "save it from the same model, e.g. copy.deepcopy(model.state_dict()) before training"
        )
    for k, v in own.items():
        if tuple(given[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{what}: {k!r} has shape {tuple(given[k].shape)}, the model's is {tuple(v.shape)} "
                "(a state from another architecture?)"
            )
    return given


@torch.no_grad()
def rewind(
    model: nn.Module,
    initial_state: Mapping[str, torch.Tensor] | nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Winning ticket: load ``initial_state`` (all parameters and buffers), then ``masks`` (default: the masks
    now on ``model``). ``initial_state`` may come from the dense or a masked model (unpruned names are used)."""
    state = check_state(model, initial_state, "initial_state")
    masks = _masks_or_current(model, masks)
    remove_masks(model, bake=False)
    model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    if masks:
        apply_masks(model, masks)
    return model


@torch.no_grad()
def reinitialize(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    factory: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Random re-initialization under the same masks: every module's ``reset_parameters()`` (or the state of
    ``factory()``) drawn under ``torch.manual_seed(seed)``, without touching the global random state."""
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    masks = _masks_or_current(model, masks)
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        fresh_state = None
        if factory is not None:
            fresh_state = check_state(model, factory(), "factory()")
        remove_masks(model, bake=False)
        if fresh_state is not None:
            model.load_state_dict(fresh_state, strict=True)
        else:
            for module in model.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
    if masks:
        apply_masks(model, masks)
    return model


def prune_and_finetune(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    train: Callable[[nn.Module, Any], Any],
    lr_schedule: Any,
) -> Any:
    """Prune & fine-tune: apply ``masks`` to the trained weights (compounding with masks already there), then
    return ``train(model, lr_schedule)``. ``lr_schedule`` is whatever your ``train`` reads (a list, a function
    of the step, a scheduler factory): fine-tuning usually restarts at a small learning rate."""
    apply_masks(model, masks)
    return train(model, lr_schedule)
