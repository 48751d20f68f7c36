"""One rule for what ``lawn`` exports: the core and the one-file methods by name, each method family as its module.

Families (``lawn.pruning``, ``lawn.nested``, ``lawn.unification``) are reached through their module; the names
once flattened to the top level still resolve, with a ``DeprecationWarning`` naming the new spelling.
"""

from __future__ import annotations

import importlib
import types
import warnings

import pytest

import lawn

FAMILIES = ("nested", "pruning", "unification")
# The family names ``lawn.__all__`` listed before the rule (they must keep working, deprecated).
ONCE_FLAT = {
    "nested": [
        "NestedConv2d", "NestedDropout", "NestedLinear", "mc_predict", "nested_kl", "recalibrate_batchnorm",
        "set_width", "slice_model",
    ],
    "pruning": [
        "WeightMask", "apply_masks", "current_masks", "iterative_magnitude_pruning", "magnitude_masks",
        "masks_from_state_dict", "prunable_weights", "prune_and_finetune", "reinitialize", "remove_masks", "rewind",
        "sparsity_report", "weight_correlation",
    ],
}  # fmt: skip


def _in_family(module: str) -> str | None:
    return next((f for f in FAMILIES if module == f"lawn.{f}" or module.startswith(f"lawn.{f}.")), None)


def test_top_level_exports_the_core_by_name_and_each_family_as_its_module() -> None:
    assert len(set(lawn.__all__)) == len(lawn.__all__)
    for name in lawn.__all__:
        obj = getattr(lawn, name)
        if isinstance(obj, types.ModuleType):
            assert name in FAMILIES, f"lawn.{name} is a module but not a method family"
            assert obj is importlib.import_module(f"lawn.{name}")
        else:
            family = _in_family(getattr(obj, "__module__", ""))
            assert family is None, f"lawn.{name} belongs to lawn.{family}: export the family, not its names"
    assert set(FAMILIES) <= set(lawn.__all__)
    for family in FAMILIES:
        members = set(importlib.import_module(f"lawn.{family}").__all__)
        assert not members & set(lawn.__all__)
        assert not members & set(vars(lawn)), "a family's name is bound at the top level"


@pytest.mark.parametrize("family", sorted(ONCE_FLAT))
def test_names_once_flattened_still_resolve_with_a_deprecation_warning(family: str) -> None:
    module = importlib.import_module(f"lawn.{family}")
    for name in ONCE_FLAT[family]:
        with pytest.warns(DeprecationWarning, match=f"use lawn.{family}.{name}"):
            assert getattr(lawn, name) is getattr(module, name)
    with pytest.warns(DeprecationWarning):
        from lawn import magnitude_masks  # noqa: F401  (the from-import form works too)


def test_unknown_top_level_names_are_attribute_errors_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no_such_name"):
            lawn.no_such_name  # noqa: B018
        assert lawn.LAWN is importlib.import_module("lawn.lawn").LAWN
